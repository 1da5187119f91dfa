import rayhpc as ray
import constants
constants.num = 2
num = constants.num

@ray.remote
def get_num():
    return constants.num

@ray.remote
def get_num_direct():
    return num

print(ray.get(get_num.remote()))
print(ray.get(get_num_direct.remote()))
