import rayhpc as ray

def add(a, b):
    return a + b

@ray.remote
def add_remote(a, b):
    return a + b

result1 = add(10, 20)
result2_future = add_remote.remote(10, 20)
result2 = ray.get(result2_future)
print(result1, result2)

class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

    def get_value(self):
        return self.value

@ray.remote
class CounterActor:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

    def get_value(self):
        return self.value

counter = Counter()
counter.increment()
counter.increment()
counter_actor = CounterActor.remote()
value1_future = counter_actor.increment.remote()
value1 = ray.get(value1_future)
value2_future = counter_actor.increment.remote()
value2 = ray.get(value2_future)
print(counter.get_value(), value1, value2)

@ray.remote
def process_data(data):
    return [x * 10 for x in data]

object_id = add_remote.remote(10, 20)
data_id = ray.put([1, 2, 3, 4])
result_id = process_data.remote(data_id)
actual_data = ray.get(data_id)
print(ray.get(object_id), actual_data, ray.get(result_id))

@ray.remote
def preprocess_batch(data_batch):
    processed_data = [x / 10 for x in data_batch]
    return processed_data

class Model:
    def __init__(self, config):
        self.w = config["w0"]

    def parameters(self):
        return {"w": self.w}

@ray.remote
class ModelTrainer:
    def __init__(self, model_config):
        self.model = Model(model_config)
        self.lr = model_config["lr"]

    def train_step(self, batch_data):
        # least squares on y = 2x: one gradient step
        grad = sum(2 * (self.model.w * x - 2 * x) * x for x in batch_data) / len(batch_data)
        self.model.w -= self.lr * grad
        return (self.model.w - 2) ** 2

    def get_model_params(self):
        return self.model.parameters()

trainer = ModelTrainer.remote({"w0": 0.0, "lr": 0.02})
batches = [preprocess_batch.remote([i, i + 1, i + 2]) for i in range(0, 30, 3)]
losses = [trainer.train_step.remote(b) for b in batches]
losses = ray.get(losses)
print(losses[-1] < losses[0], round(ray.get(trainer.get_model_params.remote())["w"], 3))
