import rayhpc as ray
import numpy as np

@ray.remote
def f(x):
    # worker process
    return x * x

@ray.remote
class Counter(object):
    def __init__(self):
        # actor process
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

@ray.remote
class Computer(object):
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

@ray.remote
def multiply(x, y):
    return np.dot(x, y)

@ray.remote
def zeros(size):
    return np.zeros(size)

if __name__ == "__main__":
    # driver process
    object_ref = f.remote(2)
    assert ray.get(object_ref) == 4
    counter = Counter.remote()
    ref = counter.increment.remote()
    assert ray.get(ref) == 1
    computer = Computer.remote()
    ref = computer.increment.remote()
    print(ray.get(ref))
    x = zeros.remote((10, 10))
    y = zeros.remote((10, 10))
    z = multiply.remote(x, y)
    z = ray.get(z)
    print(z.shape, z.sum())
