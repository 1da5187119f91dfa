import rayhpc as ray
ray.init(num_cpus=2)

@ray.remote
def add(x, y):
    return x + y

future1 = add.remote(1, 2)
future2 = add.remote(3, 4)
results = ray.get([future1, future2])
print(results)
ray.shutdown()
