import rayhpc as ray

@ray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

    def get_value(self):
        return self.value

counter = Counter.remote()
ray.kill(counter)
future = counter.increment.remote()
try:
    ray.get(future)
except ray.exceptions.RayActorError as e:
    print("RayActorError:", type(e).__name__)
