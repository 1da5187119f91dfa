import rayhpc as ray
ray.init()

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
future1 = counter.increment.remote()
future2 = counter.increment.remote()
future3 = counter.get_value.remote()
print(ray.get([future1, future2]))
print(ray.get(future3))
ray.shutdown()
