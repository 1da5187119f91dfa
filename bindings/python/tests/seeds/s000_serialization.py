import rayhpc as ray
import random

@ray.remote
class Foo:
    def __init__(self):
        self.val = Bar()

    def get_val(self):
        return self.val

    def get_id(self):
        return id(self.val)

class Bar:
    pass

workers = [Foo.remote() for _ in range(4)]
futures = [w.get_val.remote() for w in workers]
bars = ray.get(futures)
futures = [w.get_id.remote() for w in workers]
ids = ray.get(futures)
for i, b in zip(ids, bars):
    print(i, id(b), type(b).__name__)
