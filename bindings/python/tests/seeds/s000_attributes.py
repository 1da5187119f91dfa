import rayhpc as ray

@ray.remote
class Counter:
    def __init__(self):
        self.value1 = 0
        self.value2 = 100

    def get_value(self, key):
        return getattr(self, key)

    def update(self, key, value):
        setattr(self, key, value)

counter = Counter.remote()
value1 = ray.get(counter.get_value.remote("value1"))
value2 = ray.get(counter.get_value.remote("value2"))
print(value1, value2)
counter.update.remote("value1", 10)
counter.update.remote("value2", 20)
value1 = ray.get(counter.get_value.remote("value1"))
value2 = ray.get(counter.get_value.remote("value2"))
print(value1, value2)
