/* counter_class.c: an actor class defined as data (a rayhpc_class_def), so that a node
 * runtime can load it by name ("path/libcounter.so:counter_class"), as it loads task
 * functions: what a program attached to `rayhpc launch` creates its actors from. The same
 * definition serves an embedded program (counter.c registers it with rayhpc_register_class).
 *   cc -shared -fPIC counter_class.c $(pkg-config --cflags --libs rayhpc) -o libcounter.so */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <rayhpc.h>

typedef struct { int64_t value; } counter;

/* The state: a counter, from an optional 8-byte start value. */
static int32_t counter_new(const rayhpc_bytes *args, size_t nargs, void **state, rayhpc_output *out, void *user) {
  (void)user;
  if (nargs > 1 || (nargs == 1 && args[0].len != sizeof(int64_t))) {
    rayhpc_output_error(out, "Counter takes no argument or one 8-byte start value");
    return 1;
  }
  counter *c = malloc(sizeof *c);
  if (!c) { rayhpc_output_error(out, "out of memory"); return 1; }
  c->value = 0;
  if (nargs == 1) memcpy(&c->value, args[0].data, sizeof c->value);
  *state = c;
  return 0;
}

/* Runs when the actor ends (killed, or its last handle released), after its last call. */
static void counter_free(void *state, void *user) {
  (void)user;
  free(state);
}

static int32_t counter_add(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)nargs; (void)user; /* one argument: the class says so, and the runtime checks it */
  counter *c = state;
  int64_t by;
  if (args[0].len != sizeof by) { rayhpc_output_error(out, "add takes one 8-byte integer"); return 1; }
  memcpy(&by, args[0].data, sizeof by);
  c->value += by;
  return rayhpc_output_set(out, &c->value, sizeof c->value) == RAYHPC_OK ? 0 : 1;
}

static int32_t counter_get(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)user;
  counter *c = state;
  return rayhpc_output_set(out, &c->value, sizeof c->value) == RAYHPC_OK ? 0 : 1;
}

static const rayhpc_method counter_methods[] = {{"add", counter_add, 1}, {"get", counter_get, 0}};

const rayhpc_class_def counter_class = {RAYHPC_CLASS_MAGIC, "Counter", counter_new, counter_free, counter_methods, 2, NULL};
