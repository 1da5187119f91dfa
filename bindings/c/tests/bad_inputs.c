#define _POSIX_C_SOURCE 200809L
/* Every bad input of the C API gets its own status and a message, and the process goes on:
 * NULL pointers, unknown names, wrong argument counts, buffers too small, handles used after
 * release, calls before init and after shutdown, a failing task, a timeout, actor classes
 * that are not there or not classes, methods a class does not have. Embedded
 * (`bad_inputs LIB`), and attached to a node runtime (`rayhpc launch -- bad_inputs LIB`: the
 * bad inputs of that mode); LIB is testlib.c's shared library. Exits non-zero when an
 * expectation does not hold (after trying them all). */
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <math.h>
#include <stdatomic.h>
#include <rayhpc.h>

static int failures = 0;

static void expect(const char *what, rayhpc_status got, rayhpc_status want, const char *needle) {
  const char *msg = rayhpc_last_error();
  int ok = got == want && (needle == NULL || strstr(msg, needle) != NULL);
  printf("%s %-44s %s: %s\n", ok ? "ok  " : "FAIL", what, rayhpc_status_name(got), got == RAYHPC_OK ? "" : msg);
  if (!ok) {
    printf("     wanted %s%s%s\n", rayhpc_status_name(want), needle ? " with " : "", needle ? needle : "");
    failures++;
  }
}

static int32_t echo(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  return nargs == 1 && rayhpc_output_set(out, args[0].data, args[0].len) == RAYHPC_OK ? 0 : 1;
}

static int32_t boom(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)user;
  rayhpc_output_error(out, "boom: it failed on purpose");
  return 7;
}

static int32_t nothing_new(const rayhpc_bytes *args, size_t nargs, void **state, rayhpc_output *out, void *user) {
  (void)args; (void)user; (void)state;
  if (nargs > 0) { rayhpc_output_error(out, "this constructor refuses arguments"); return 3; }
  return 0;
}

static int32_t nothing_m(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)state; (void)args; (void)nargs; (void)out; (void)user;
  return 0;
}

static atomic_int runs;

static int32_t counted(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)out; (void)user;
  atomic_fetch_add(&runs, 1);
  return 0;
}

/* Writes 16 bytes with rayhpc_output_alloc, then sets the result to 8 of them (a range of
 * that very buffer): the result must be bytes 4..12. */
static int32_t overlap(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)user;
  void *b;
  if (rayhpc_output_alloc(out, 16, &b) != RAYHPC_OK) return 1;
  for (int i = 0; i < 16; i++) ((uint8_t *)b)[i] = (uint8_t)i;
  return rayhpc_output_set(out, (uint8_t *)b + 4, 8) == RAYHPC_OK ? 0 : 2;
}

static int32_t huge(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)user;
  void *b;
  rayhpc_status s = rayhpc_output_alloc(out, (size_t)0x7ffffffffff0, &b);
  return s == RAYHPC_E_STORE ? 0 : 1; /* refused, and the task goes on */
}

/* A parent actor whose state is a child actor, released by the parent's destructor. */
static int32_t parent_new(const rayhpc_bytes *args, size_t nargs, void **state, rayhpc_output *out, void *user) {
  (void)user; (void)out;
  rayhpc_actor *child = malloc(sizeof *child);
  if (nargs != 1 || args[0].len != sizeof *child) { free(child); return 1; }
  memcpy(child, args[0].data, sizeof *child);
  *state = child;
  return 0;
}

static void parent_free(void *state, void *user) {
  (void)user;
  rayhpc_actor_release(*(rayhpc_actor *)state); /* calls the API from a destructor */
  free(state);
}

/* A task that submits a task (the API from inside a task function), slowly: a shutdown
 * that comes meanwhile must not deadlock with it. */
static int32_t nested(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)out; (void)user;
  struct timespec t = {0, 200000000};
  nanosleep(&t, NULL);
  rayhpc_ref r;
  rayhpc_status s = rayhpc_submit("counted", NULL, 0, NULL, &r);
  if (s == RAYHPC_OK) rayhpc_ref_release(r);
  return 0;
}

static int32_t nap(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)out; (void)user;
  struct timespec t = {0, 300000000};
  nanosleep(&t, NULL);
  return 0;
}

static char lib_sym[4096];

/* "LIB:symbol" of the test library. */
static const char *sym(const char *lib, const char *symbol) {
  snprintf(lib_sym, sizeof lib_sym, "%s:%s", lib, symbol);
  return lib_sym;
}

/* The bad inputs of a program attached to a node runtime: what is registered in this
 * process cannot run there, and native classes the node loads are checked as embedded. */
static int attached(const char *lib) {
  rayhpc_ref r = 0;
  rayhpc_actor act = 0, dead = 0;
  size_t len = 0;
  int64_t v = 0, one = 1;
  rayhpc_arg a1 = {RAYHPC_ARG_BYTES, {(const uint8_t *)&one, sizeof one}, 0};
  rayhpc_method ms[] = {{"m", nothing_m, 0}};
  expect("register class K", rayhpc_register_class("K", nothing_new, NULL, ms, 1, NULL), RAYHPC_OK, NULL);
  expect("register echo", rayhpc_register("echo", echo, NULL, 1), RAYHPC_OK, NULL);
  expect("init (attached)", rayhpc_init(NULL), RAYHPC_OK, NULL);
  expect("a registered class used attached", rayhpc_actor_create("K", NULL, 0, NULL, &act), RAYHPC_E_INVALID, "registered in this process");
  expect("a registered function used attached", rayhpc_submit("echo", &a1, 1, NULL, &r), RAYHPC_E_UNKNOWN_FUNCTION, "library:symbol");
  expect("create of an unknown name", rayhpc_actor_create("NoSuch", NULL, 0, NULL, &act), RAYHPC_E_UNKNOWN_FUNCTION, "NoSuch");
  expect("create of an unknown class symbol", rayhpc_actor_create(sym(lib, "no_such_class"), NULL, 0, NULL, &act), RAYHPC_E_UNKNOWN_FUNCTION, "no symbol");
  expect("create of an unloadable library", rayhpc_actor_create("libnope.so:c", NULL, 0, NULL, &act), RAYHPC_E_UNKNOWN_FUNCTION, "cannot load");
  expect("create of a symbol that is no class", rayhpc_actor_create(sym(lib, "not_a_class"), NULL, 0, NULL, &act), RAYHPC_E_INVALID, "not a rayhpc_class_def");
  expect("create of a class without constructor", rayhpc_actor_create(sym(lib, "no_ctor_class"), NULL, 0, NULL, &act), RAYHPC_E_INVALID, "constructor is NULL");
  expect("create NULL out", rayhpc_actor_create(sym(lib, "tally_class"), NULL, 0, NULL, NULL), RAYHPC_E_NULL, "out");
  expect("create", rayhpc_actor_create(sym(lib, "tally_class"), NULL, 0, NULL, &act), RAYHPC_OK, NULL);
  expect("call an unknown method", rayhpc_actor_call(act, "nope", NULL, 0, &r), RAYHPC_E_UNKNOWN_FUNCTION, "nope");
  expect("call with the wrong count", rayhpc_actor_call(act, "add", NULL, 0, &r), RAYHPC_E_ARG_COUNT, "takes 1");
  expect("call NULL method", rayhpc_actor_call(act, NULL, NULL, 0, &r), RAYHPC_E_NULL, "method");
  rayhpc_arg dangling = {RAYHPC_ARG_REF, {NULL, 0}, 12345};
  expect("call with a ref never made", rayhpc_actor_call(act, "add", &dangling, 1, &r), RAYHPC_E_BAD_HANDLE, "never made");
  expect("call", rayhpc_actor_call(act, "add", &a1, 1, &r), RAYHPC_OK, NULL);
  expect("its result", rayhpc_get_into(r, 10, &v, sizeof v, &len), RAYHPC_OK, NULL);
  if (v != 1) { printf("FAIL tally add: %lld\n", (long long)v); failures++; }
  rayhpc_ref_release(r);
  expect("call with a bad argument", rayhpc_actor_call(act, "add", &(rayhpc_arg){RAYHPC_ARG_BYTES, {(const uint8_t *)"x", 1}, 0}, 1, &r), RAYHPC_OK, NULL);
  expect("fails in the method", rayhpc_get_into(r, 10, &v, sizeof v, &len), RAYHPC_E_TASK, "add takes one 8-byte integer");
  rayhpc_ref_release(r);
  expect("kill", rayhpc_actor_kill(act), RAYHPC_OK, NULL);
  expect("call after kill", rayhpc_actor_call(act, "get", NULL, 0, &r), RAYHPC_OK, NULL);
  expect("fails as a dead actor", rayhpc_get_into(r, 10, &v, sizeof v, &len), RAYHPC_E_ACTOR_DIED, NULL);
  rayhpc_ref_release(r);
  expect("actor release", rayhpc_actor_release(act), RAYHPC_OK, NULL);
  expect("call a released actor", rayhpc_actor_call(act, "get", NULL, 0, &r), RAYHPC_E_BAD_HANDLE, "released");
  expect("kill a released actor", rayhpc_actor_kill(act), RAYHPC_E_BAD_HANDLE, "released");
  expect("release twice", rayhpc_actor_release(act), RAYHPC_E_BAD_HANDLE, NULL);
  expect("create with a refusing constructor", rayhpc_actor_create(sym(lib, "tally_class"), &a1, 1, NULL, &dead), RAYHPC_OK, NULL);
  expect("call it", rayhpc_actor_call(dead, "get", NULL, 0, &r), RAYHPC_OK, NULL);
  expect("fails: the constructor failed", rayhpc_get_into(r, 10, &v, sizeof v, &len), RAYHPC_E_ACTOR_DIED, "refuses arguments");
  rayhpc_ref_release(r);
  rayhpc_actor_release(dead);
  int64_t nap_ms = 300;
  rayhpc_arg am = {RAYHPC_ARG_BYTES, {(const uint8_t *)&nap_ms, sizeof nap_ms}, 0};
  expect("submit nap", rayhpc_submit(sym(lib, "nap"), &am, 1, NULL, &r), RAYHPC_OK, NULL);
  expect("get with a short timeout", rayhpc_get_into(r, 0.01, &v, sizeof v, &len), RAYHPC_E_TIMEOUT, NULL);
  expect("get it after all", rayhpc_get_into(r, -1, &v, sizeof v, &len), RAYHPC_OK, NULL);
  rayhpc_ref_release(r);
  expect("create for after shutdown", rayhpc_actor_create(sym(lib, "tally_class"), NULL, 0, NULL, &act), RAYHPC_OK, NULL);
  expect("shutdown (detach)", rayhpc_shutdown(), RAYHPC_OK, NULL);
  expect("call after shutdown", rayhpc_actor_call(act, "get", NULL, 0, &r), RAYHPC_E_NOT_INITIALIZED, NULL);
  expect("create after shutdown", rayhpc_actor_create(sym(lib, "tally_class"), NULL, 0, NULL, &act), RAYHPC_E_NOT_INITIALIZED, NULL);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "all bad inputs handled (attached)", failures);
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s /path/to/libtestlib.so\n", argv[0]);
    return 2;
  }
  const char *lib = argv[1];
  if (getenv("RAYHPC_ADDRESS")) return attached(lib);
  rayhpc_ref r = 0, r2 = 0;
  rayhpc_view v = 0;
  size_t len = 0;
  char small[2];
  rayhpc_arg one = {RAYHPC_ARG_BYTES, {(const uint8_t *)"hello", 5}, 0};

  expect("submit before init", rayhpc_submit("echo", &one, 1, NULL, &r), RAYHPC_E_NOT_INITIALIZED, "rayhpc_init");
  expect("shutdown before init", rayhpc_shutdown(), RAYHPC_E_NOT_INITIALIZED, NULL);
  expect("register NULL name", rayhpc_register(NULL, echo, NULL, 1), RAYHPC_E_NULL, "name");
  expect("register NULL function", rayhpc_register("x", NULL, NULL, 1), RAYHPC_E_NULL, "function");
  expect("register bad nargs", rayhpc_register("x", echo, NULL, -5), RAYHPC_E_INVALID, "nargs");
  expect("register echo", rayhpc_register("echo", echo, NULL, 1), RAYHPC_OK, NULL);
  expect("register boom", rayhpc_register("boom", boom, NULL, 0), RAYHPC_OK, NULL);
  expect("register nap", rayhpc_register("nap", nap, NULL, 0), RAYHPC_OK, NULL);

  rayhpc_config cfg = rayhpc_config_default();
  cfg.resources = "disk";
  expect("init with a bad resource string", rayhpc_init(&cfg), RAYHPC_E_INVALID, "name=amount");
  cfg.resources = "disk=2";
  cfg.num_cpus = 2;
  expect("init", rayhpc_init(&cfg), RAYHPC_OK, NULL);
  expect("init twice", rayhpc_init(NULL), RAYHPC_E_ALREADY_INITIALIZED, NULL);

  expect("submit unknown function", rayhpc_submit("nope", NULL, 0, NULL, &r), RAYHPC_E_UNKNOWN_FUNCTION, "nope");
  expect("submit unloadable library:symbol", rayhpc_submit("libnope.so:f", NULL, 0, NULL, &r), RAYHPC_E_UNKNOWN_FUNCTION, "cannot load");
  expect("submit missing symbol", rayhpc_submit("libc.so.6:no_such_symbol_here", NULL, 0, NULL, &r), RAYHPC_E_UNKNOWN_FUNCTION, "no symbol");
  expect("submit NULL name", rayhpc_submit(NULL, NULL, 0, NULL, &r), RAYHPC_E_NULL, "name");
  rayhpc_fn fe = 0;
  expect("lookup unknown", rayhpc_lookup("nope", &fe), RAYHPC_E_UNKNOWN_FUNCTION, "nope");
  expect("lookup echo", rayhpc_lookup("echo", &fe), RAYHPC_OK, NULL);
  expect("call by handle", rayhpc_call(fe, &one, 1, NULL, &r), RAYHPC_OK, NULL);
  expect("get of a call by handle", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_E_TOO_SMALL, "5 bytes");
  rayhpc_ref_release(r);
  expect("call a handle never made", rayhpc_call(fe + 100, &one, 1, NULL, &r), RAYHPC_E_BAD_HANDLE, "never made");
  expect("call with the wrong count", rayhpc_call(fe, NULL, 0, NULL, &r), RAYHPC_E_ARG_COUNT, NULL);
  rayhpc_call_spec specs[3] = {{fe, &one, 1, NULL}, {fe, &one, 1, NULL}, {fe, NULL, 0, NULL}};
  rayhpc_ref batch[3] = {0, 0, 0};
  expect("a batch with one bad call", rayhpc_call_batch(specs, 3, batch), RAYHPC_E_ARG_COUNT, NULL);
  if (batch[0] != 0) { printf("FAIL a refused batch made refs\n"); failures++; }
  expect("a batch NULL", rayhpc_call_batch(NULL, 3, batch), RAYHPC_E_NULL, NULL);
  expect("a batch of two", rayhpc_call_batch(specs, 2, batch), RAYHPC_OK, NULL);
  expect("release the batch", rayhpc_ref_release_batch(batch, 2), RAYHPC_OK, NULL);
  expect("release it again", rayhpc_ref_release_batch(batch, 2), RAYHPC_E_BAD_HANDLE, "released");
  expect("submit NULL out", rayhpc_submit("echo", &one, 1, NULL, NULL), RAYHPC_E_NULL, "out");
  expect("submit wrong argument count", rayhpc_submit("echo", NULL, 0, NULL, &r), RAYHPC_E_ARG_COUNT, "takes 1");
  expect("submit NULL args with a count", rayhpc_submit("boom", NULL, 3, NULL, &r), RAYHPC_E_ARG_COUNT, NULL);
  rayhpc_arg dangling = {RAYHPC_ARG_REF, {NULL, 0}, 12345};
  expect("submit with a ref never made", rayhpc_submit("echo", &dangling, 1, NULL, &r), RAYHPC_E_BAD_HANDLE, "never made");
  rayhpc_options o = rayhpc_options_default();
  o.num_cpus = 64;
  expect("submit asking for 64 CPUs of 2", rayhpc_submit("echo", &one, 1, &o, &r), RAYHPC_E_RESOURCES, "CPU");
  o = rayhpc_options_default();
  o.resources = "disk=x";
  expect("submit with a bad resource amount", rayhpc_submit("echo", &one, 1, &o, &r), RAYHPC_E_INVALID, "number");

  expect("submit echo", rayhpc_submit("echo", &one, 1, NULL, &r), RAYHPC_OK, NULL);
  expect("get_into a buffer too small", rayhpc_get_into(r, 10, small, sizeof small, &len), RAYHPC_E_TOO_SMALL, "5 bytes");
  printf("     (len = %zu)\n", len);
  if (len != 5) failures++;
  expect("get NULL out", rayhpc_get(r, 10, NULL), RAYHPC_E_NULL, NULL);
  expect("get", rayhpc_get(r, 10, &v), RAYHPC_OK, NULL);
  expect("view_data NULL", rayhpc_view_data(v, NULL, &len), RAYHPC_E_NULL, NULL);
  expect("view release", rayhpc_view_release(v), RAYHPC_OK, NULL);
  const uint8_t *data;
  expect("view_data after release", rayhpc_view_data(v, &data, &len), RAYHPC_E_BAD_HANDLE, "released");
  expect("view release twice", rayhpc_view_release(v), RAYHPC_E_BAD_HANDLE, NULL);
  expect("ref release", rayhpc_ref_release(r), RAYHPC_OK, NULL);
  expect("get after release", rayhpc_get(r, 1, &v), RAYHPC_E_BAD_HANDLE, "released");
  expect("ref release twice", rayhpc_ref_release(r), RAYHPC_E_BAD_HANDLE, NULL);

  expect("submit boom", rayhpc_submit("boom", NULL, 0, NULL, &r), RAYHPC_OK, NULL);
  expect("get of a failed task", rayhpc_get(r, 10, &v), RAYHPC_E_TASK, "boom: it failed on purpose");
  rayhpc_arg dep = {RAYHPC_ARG_REF, {NULL, 0}, r};
  expect("a task depending on it", rayhpc_submit("echo", &dep, 1, NULL, &r2), RAYHPC_OK, NULL);
  expect("fails with the same error", rayhpc_get(r2, 10, &v), RAYHPC_E_TASK, "'boom'");
  rayhpc_ref_release(r);
  rayhpc_ref_release(r2);

  expect("submit nap", rayhpc_submit("nap", NULL, 0, NULL, &r), RAYHPC_OK, NULL);
  expect("get with a short timeout", rayhpc_get(r, 0.01, &v), RAYHPC_E_TIMEOUT, "not ready");
  uint8_t ready = 9;
  size_t nready = 9;
  expect("wait with a short timeout", rayhpc_wait(&r, 1, 1, 0.01, &ready, &nready), RAYHPC_OK, NULL);
  if (ready != 0 || nready != 0) { printf("FAIL wait reported ready\n"); failures++; }
  size_t got_len = 0;
  expect("get_into with a short timeout", rayhpc_get_into(r, 0.01, NULL, 0, &got_len), RAYHPC_E_TIMEOUT, "not ready");
  rayhpc_ref pair[2] = {r, 0};
  uint8_t ready2[2] = {9, 9};
  expect("put", rayhpc_put("x", 1, &pair[1]), RAYHPC_OK, NULL);
  expect("wait for both with a short timeout", rayhpc_wait(pair, 2, 2, 0.01, ready2, &nready), RAYHPC_OK, NULL);
  if (ready2[0] != 0 || ready2[1] != 1 || nready != 1) {
    printf("FAIL wait for both: ready %d %d, %zu in all\n", ready2[0], ready2[1], nready);
    failures++;
  }
  rayhpc_ref_release(pair[1]);
  expect("wait num_returns > n", rayhpc_wait(&r, 1, 2, 0.01, &ready, &nready), RAYHPC_E_INVALID, NULL);
  expect("wait NULL refs", rayhpc_wait(NULL, 1, 1, 0.01, &ready, &nready), RAYHPC_E_NULL, NULL);
  expect("wait until ready", rayhpc_wait(&r, 1, 1, -1, &ready, &nready), RAYHPC_OK, NULL);
  if (ready != 1 || nready != 1) { printf("FAIL wait did not report ready\n"); failures++; }
  rayhpc_ref_release(r);

  rayhpc_method ms[] = {{"m", nothing_m, 0}};
  rayhpc_method bad_ms[] = {{"m", NULL, 0}};
  expect("register class NULL ctor", rayhpc_register_class("K", NULL, NULL, ms, 1, NULL), RAYHPC_E_NULL, "constructor");
  expect("register class NULL method", rayhpc_register_class("K", nothing_new, NULL, bad_ms, 1, NULL), RAYHPC_E_NULL, "method m");
  expect("register class NULL methods", rayhpc_register_class("K", nothing_new, NULL, NULL, 1, NULL), RAYHPC_E_NULL, "methods");
  expect("register class", rayhpc_register_class("K", nothing_new, NULL, ms, 1, NULL), RAYHPC_OK, NULL);
  rayhpc_actor act = 0;
  expect("create of an unknown class", rayhpc_actor_create("NoSuch", NULL, 0, NULL, &act), RAYHPC_E_UNKNOWN_FUNCTION, "NoSuch");
  expect("create of an unknown class symbol", rayhpc_actor_create(sym(lib, "no_such_class"), NULL, 0, NULL, &act), RAYHPC_E_UNKNOWN_FUNCTION, "no symbol");
  expect("create of a symbol that is no class", rayhpc_actor_create(sym(lib, "not_a_class"), NULL, 0, NULL, &act), RAYHPC_E_INVALID, "not a rayhpc_class_def");
  expect("create of a class without constructor", rayhpc_actor_create(sym(lib, "no_ctor_class"), NULL, 0, NULL, &act), RAYHPC_E_INVALID, "constructor is NULL");
  expect("create NULL out", rayhpc_actor_create("K", NULL, 0, NULL, NULL), RAYHPC_E_NULL, "out");
  expect("create a library:symbol class here", rayhpc_actor_create(sym(lib, "tally_class"), NULL, 0, NULL, &act), RAYHPC_OK, NULL);
  expect("call its unknown method", rayhpc_actor_call(act, "nope", NULL, 0, &r), RAYHPC_E_UNKNOWN_FUNCTION, "Tally has no method");
  expect("call it with the wrong count", rayhpc_actor_call(act, "add", NULL, 0, &r), RAYHPC_E_ARG_COUNT, "takes 1");
  int64_t two = 2;
  rayhpc_arg a2 = {RAYHPC_ARG_BYTES, {(const uint8_t *)&two, sizeof two}, 0};
  expect("call it", rayhpc_actor_call(act, "add", &a2, 1, &r), RAYHPC_OK, NULL);
  int64_t got = 0;
  expect("its result", rayhpc_get_into(r, 10, &got, sizeof got, &len), RAYHPC_OK, NULL);
  if (got != 2) { printf("FAIL tally add: %lld\n", (long long)got); failures++; }
  rayhpc_ref_release(r);
  expect("release it", rayhpc_actor_release(act), RAYHPC_OK, NULL);
  expect("kill a released actor", rayhpc_actor_kill(act), RAYHPC_E_BAD_HANDLE, "released");
  expect("create", rayhpc_actor_create("K", NULL, 0, NULL, &act), RAYHPC_OK, NULL);
  expect("call an unknown method", rayhpc_actor_call(act, "nope", NULL, 0, &r), RAYHPC_E_UNKNOWN_FUNCTION, "nope");
  expect("call with the wrong count", rayhpc_actor_call(act, "m", &one, 1, &r), RAYHPC_E_ARG_COUNT, "takes 0");
  expect("call", rayhpc_actor_call(act, "m", NULL, 0, &r), RAYHPC_OK, NULL);
  expect("its result", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_OK, NULL);
  rayhpc_ref_release(r);
  expect("kill", rayhpc_actor_kill(act), RAYHPC_OK, NULL);
  expect("call after kill", rayhpc_actor_call(act, "m", NULL, 0, &r), RAYHPC_OK, NULL);
  expect("fails as a dead actor", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_E_ACTOR_DIED, "killed");
  rayhpc_ref_release(r);
  expect("actor release", rayhpc_actor_release(act), RAYHPC_OK, NULL);
  expect("call after release", rayhpc_actor_call(act, "m", NULL, 0, &r), RAYHPC_E_BAD_HANDLE, "released");
  expect("a released actor called with bad arguments", rayhpc_actor_call(act, "m", &one, 1, &r), RAYHPC_E_BAD_HANDLE, "released");
  expect("release twice", rayhpc_actor_release(act), RAYHPC_E_BAD_HANDLE, NULL);
  expect("create with a refusing constructor", rayhpc_actor_create("K", &one, 1, NULL, &act), RAYHPC_OK, NULL);
  expect("call", rayhpc_actor_call(act, "m", NULL, 0, &r), RAYHPC_OK, NULL);
  expect("fails: the constructor failed", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_E_ACTOR_DIED, "refuses arguments");
  rayhpc_ref_release(r);
  rayhpc_actor_release(act);

  /* Values C may pass where the API takes an enum. */
  rayhpc_arg weird = {7, {NULL, 0}, 0};
  expect("an argument kind that is neither", rayhpc_submit("echo", &weird, 1, NULL, &r), RAYHPC_E_INVALID, "kind 7");
  if (strcmp(rayhpc_status_name(2016), "RAYHPC_UNKNOWN_STATUS") != 0) { printf("FAIL status_name(2016)\n"); failures++; }
  expect("put", rayhpc_put("abc", 3, &r), RAYHPC_OK, NULL);
  expect("get with a NaN timeout", rayhpc_get(r, NAN, &v), RAYHPC_E_INVALID, "NaN");
  expect("get with an infinite timeout", rayhpc_get_into(r, INFINITY, small, 0, &len), RAYHPC_E_TOO_SMALL, NULL);
  expect("get with a 1e300 s timeout", rayhpc_get_into(r, 1e300, small, 0, &len), RAYHPC_E_TOO_SMALL, NULL);
  rayhpc_ref_release(r);
  expect("register overlap", rayhpc_register("overlap", overlap, NULL, 0), RAYHPC_OK, NULL);
  expect("submit overlap", rayhpc_submit("overlap", NULL, 0, NULL, &r), RAYHPC_OK, NULL);
  uint8_t eight[8];
  expect("output_set from its own buffer", rayhpc_get_into(r, 10, eight, sizeof eight, &len), RAYHPC_OK, NULL);
  if (len != 8 || eight[0] != 4 || eight[7] != 11) { printf("FAIL overlap result\n"); failures++; }
  rayhpc_ref_release(r);
  expect("register huge", rayhpc_register("huge", huge, NULL, 0), RAYHPC_OK, NULL);
  expect("submit huge", rayhpc_submit("huge", NULL, 0, NULL, &r), RAYHPC_OK, NULL);
  expect("an output_alloc too large is refused", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_OK, NULL);
  rayhpc_ref_release(r);
  expect("register counted", rayhpc_register("counted", counted, NULL, 0), RAYHPC_OK, NULL);
  rayhpc_fn fc = 0;
  expect("lookup counted", rayhpc_lookup("counted", &fc), RAYHPC_OK, NULL);
  rayhpc_options gpu = rayhpc_options_default();
  gpu.num_gpus = 1;
  rayhpc_call_spec infeasible[3] = {{fc, NULL, 0, NULL}, {fc, NULL, 0, NULL}, {fc, NULL, 0, &gpu}};
  rayhpc_ref three[3] = {0, 0, 0};
  expect("a batch with an infeasible call", rayhpc_call_batch(infeasible, 3, three), RAYHPC_E_RESOURCES, "call 2");
  struct timespec settle = {0, 100000000};
  nanosleep(&settle, NULL);
  if (atomic_load(&runs) != 0) { printf("FAIL a refused batch ran %d task(s)\n", atomic_load(&runs)); failures++; }
  rayhpc_actor child = 0, parent = 0;
  expect("create the child", rayhpc_actor_create("K", NULL, 0, NULL, &child), RAYHPC_OK, NULL);
  rayhpc_method none[1] = {{"m", nothing_m, 0}};
  expect("register Parent", rayhpc_register_class("Parent", parent_new, parent_free, none, 1, NULL), RAYHPC_OK, NULL);
  rayhpc_arg ca = {RAYHPC_ARG_BYTES, {(const uint8_t *)&child, sizeof child}, 0};
  expect("create the parent", rayhpc_actor_create("Parent", &ca, 1, NULL, &parent), RAYHPC_OK, NULL);
  expect("a call on the parent", rayhpc_actor_call(parent, "m", NULL, 0, &r), RAYHPC_OK, NULL);
  expect("its result", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_OK, NULL);
  rayhpc_ref_release(r);
  alarm(20); /* a deadlock here would hang: fail instead */
  expect("release the parent (its destructor releases the child)", rayhpc_actor_release(parent), RAYHPC_OK, NULL);
  alarm(0);

  expect("put NULL data with a length", rayhpc_put(NULL, 10, &r), RAYHPC_E_NULL, NULL);
  expect("put empty", rayhpc_put(NULL, 0, &r), RAYHPC_OK, NULL);
  expect("get_into of an empty object", rayhpc_get_into(r, 1, NULL, 0, &len), RAYHPC_OK, NULL);
  rayhpc_ref_release(r);
  expect("output_set NULL out", rayhpc_output_set(NULL, "x", 1), RAYHPC_E_NULL, NULL);

  expect("a name of the statuses", strcmp(rayhpc_status_name(RAYHPC_E_STORE), "RAYHPC_E_STORE") == 0 ? RAYHPC_OK : RAYHPC_E_INTERNAL, RAYHPC_OK, NULL);
  expect("register nested", rayhpc_register("nested", nested, NULL, 0), RAYHPC_OK, NULL);
  rayhpc_ref nest = 0;
  expect("submit a task that submits", rayhpc_submit("nested", NULL, 0, NULL, &nest), RAYHPC_OK, NULL);
  struct timespec started = {0, 50000000};
  nanosleep(&started, NULL);
  rayhpc_ref stale = 0;
  expect("a ref to outlive the runtime", rayhpc_put("old", 3, &stale), RAYHPC_OK, NULL);
  alarm(20); /* the nested task calls the API while shutdown waits for it: no deadlock */
  expect("shutdown", rayhpc_shutdown(), RAYHPC_OK, NULL);
  alarm(0);
  expect("submit after shutdown", rayhpc_submit("echo", &one, 1, NULL, &r), RAYHPC_E_NOT_INITIALIZED, NULL);
  expect("put after shutdown", rayhpc_put("x", 1, &r), RAYHPC_E_NOT_INITIALIZED, NULL);
  expect("create an actor after shutdown", rayhpc_actor_create("K", NULL, 0, NULL, &act), RAYHPC_E_NOT_INITIALIZED, NULL);
  expect("shutdown twice", rayhpc_shutdown(), RAYHPC_E_NOT_INITIALIZED, NULL);
  expect("init again after shutdown", rayhpc_init(NULL), RAYHPC_OK, NULL);
  rayhpc_ref fresh = 0;
  expect("a ref of the new runtime", rayhpc_put("new", 3, &fresh), RAYHPC_OK, NULL);
  expect("the old ref is not the new one", rayhpc_get(stale, 1, &v), RAYHPC_E_BAD_HANDLE, NULL);
  expect("the new ref is fine", rayhpc_get_into(fresh, 1, small, 0, &len), RAYHPC_E_TOO_SMALL, NULL);
  rayhpc_ref_release(fresh);
  expect("submit on the new runtime", rayhpc_submit("echo", &one, 1, NULL, &r), RAYHPC_OK, NULL);
  expect("get on the new runtime", rayhpc_get_into(r, 10, small, 0, &len), RAYHPC_E_TOO_SMALL, NULL);
  rayhpc_ref_release(r);
  expect("final shutdown", rayhpc_shutdown(), RAYHPC_OK, NULL);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "all bad inputs handled", failures);
  return failures ? 1 : 0;
}
