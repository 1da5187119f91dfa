import rayhpc as ray
import time
ray.init()

@ray.remote
class Counter(object):
    def __init__(self):
        self.x = 0

    def inc(self):
        self.x += 1

    def get_value(self):
        return self.x

# Create an actor process.
c = Counter.remote()
# Check the actor's counter value.
print(ray.get(c.get_value.remote()))  # 0
# Increment the counter twice and check the value again.
c.inc.remote()
c.inc.remote()
print(ray.get(c.get_value.remote()))  # 2

@ray.remote
class MessageActor(object):
    def __init__(self):
        self.messages = []

    def add_message(self, message):
        self.messages.append(message)

    def get_and_clear_messages(self):
        messages = self.messages
        self.messages = []
        return messages

# Define a remote function which loops around and pushes
# messages to the actor.
@ray.remote
def worker(message_actor, j):
    for i in range(3):
        time.sleep(0.1)
        message_actor.add_message.remote(
            "Message {} from actor {}.".format(i, j))

# Create a message actor.
message_actor = MessageActor.remote()
# Start 3 tasks that push messages to the actor.
tasks = [worker.remote(message_actor, j) for j in range(3)]
# Periodically get the messages and print them.
seen = []
for _ in range(40):
    new_messages = ray.get(message_actor.get_and_clear_messages.remote())
    print("New messages:", new_messages)
    seen += new_messages
    if len(seen) == 9:
        break
    time.sleep(0.1)
print("all", len(seen), len(set(seen)))
