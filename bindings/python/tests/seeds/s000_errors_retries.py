import rayhpc as ray

@ray.remote
def might_fail(x):
    if x < 0:
        raise ValueError("Negative value")
    return x

try:
    result = ray.get(might_fail.remote(-1))
except ray.exceptions.RayTaskError as e:
    print("Task failed:", e)

@ray.remote(max_retries=3)
def unstable_function():
    pass

print(ray.get(unstable_function.remote()))
