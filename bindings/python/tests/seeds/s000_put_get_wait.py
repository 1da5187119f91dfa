import time
import rayhpc as ray
ray.init()

data = [1, 2, 3, 4, 5]
data_ref = ray.put(data)
result = ray.get(data_ref)
print(result)

@ray.remote
def slow_function(i):
    time.sleep(i)
    return i

refs = [slow_function.remote(i) for i in range(4)]
ready_refs, remaining_refs = ray.wait(refs, num_returns=2)
print(len(ready_refs), len(remaining_refs))
ready_refs, remaining_refs = ray.wait(refs, num_returns=len(refs))
print(len(ready_refs), len(remaining_refs))
print(ray.get(ready_refs))
