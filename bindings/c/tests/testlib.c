#define _POSIX_C_SOURCE 200809L
/* testlib: native functions and actor classes for the C API's tests, loaded by name
 * ("path/libtestlib.so:symbol") by the embedded runtime or by a node runtime.
 *   cc -shared -fPIC testlib.c $(pkg-config --cflags --libs rayhpc) -o libtestlib.so */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <rayhpc.h>

static int int64_arg(const rayhpc_bytes *args, size_t nargs, int64_t *v) {
  if (nargs != 1 || args[0].len != sizeof *v) return 0;
  memcpy(v, args[0].data, sizeof *v);
  return 1;
}

/* One 8-byte integer in, its square out. */
int32_t square(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  int64_t x;
  if (!int64_arg(args, nargs, &x)) { rayhpc_output_error(out, "square takes one 8-byte integer"); return 1; }
  x *= x;
  return rayhpc_output_set(out, &x, sizeof x) == RAYHPC_OK ? 0 : 1;
}

/* Sleeps the milliseconds it is given (one 8-byte integer), and returns them. */
int32_t nap(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  int64_t ms;
  if (!int64_arg(args, nargs, &ms)) { rayhpc_output_error(out, "nap takes one 8-byte integer (ms)"); return 1; }
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
  return rayhpc_output_set(out, &ms, sizeof ms) == RAYHPC_OK ? 0 : 1;
}

/* Tally: a running total. add(n) returns the total after it; get() the total. */
static int32_t tally_new(const rayhpc_bytes *args, size_t nargs, void **state, rayhpc_output *out, void *user) {
  (void)args; (void)user;
  if (nargs > 0) { rayhpc_output_error(out, "this constructor refuses arguments"); return 3; }
  int64_t *t = calloc(1, sizeof *t);
  if (!t) { rayhpc_output_error(out, "out of memory"); return 1; }
  *state = t;
  return 0;
}

static void tally_free(void *state, void *user) {
  (void)user;
  free(state);
}

static int32_t tally_add(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  int64_t by, *t = state;
  if (!int64_arg(args, nargs, &by)) { rayhpc_output_error(out, "add takes one 8-byte integer"); return 1; }
  *t += by;
  return rayhpc_output_set(out, t, sizeof *t) == RAYHPC_OK ? 0 : 1;
}

static int32_t tally_get(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)user;
  return rayhpc_output_set(out, state, sizeof(int64_t)) == RAYHPC_OK ? 0 : 1;
}

static const rayhpc_method tally_methods[] = {{"add", tally_add, 1}, {"get", tally_get, 0}};

const rayhpc_class_def tally_class = {RAYHPC_CLASS_MAGIC, "Tally", tally_new, tally_free, tally_methods, 2, NULL};

/* Not class definitions: data without the magic, and a definition without a constructor. */
const uint64_t not_a_class[8] = {42};
const rayhpc_class_def no_ctor_class = {RAYHPC_CLASS_MAGIC, "NoCtor", NULL, NULL, NULL, 0, NULL};
