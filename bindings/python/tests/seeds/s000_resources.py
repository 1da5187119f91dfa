import rayhpc as ray
ray.init(num_cpus=2, num_gpus=1)

@ray.remote(num_cpus=2)
def cpu_task():
    return 1

@ray.remote(num_gpus=1)
def gpu_task():
    return 1

@ray.remote
def task():
    return 1

future = task.options(num_cpus=2).remote()
print(ray.get([cpu_task.remote(), gpu_task.remote(), future]))
