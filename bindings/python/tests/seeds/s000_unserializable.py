import rayhpc as ray
import threading

class UnserializableClass:
    def __init__(self):
        self.lock = threading.Lock()
        self.value = 0

@ray.remote
class MyActor:
    def __init__(self):
        self.unserializable = UnserializableClass()

    def get_value(self):
        return self.unserializable

try:
    actor = MyActor.remote()
    result = ray.get(actor.get_value.remote())
except Exception as e:
    print(f"Error: {e}")
