/* counter: an actor. Its state (a counter) lives in the runtime; calls run one at a time, in
 * the order they were made; kill ends it (its destructor frees the state). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"

typedef struct { int64_t value; } counter;

static int32_t counter_new(const rayhpc_bytes *args, size_t nargs, void **state, rayhpc_output *out, void *user) {
  (void)user;
  counter *c = malloc(sizeof *c);
  if (!c) { rayhpc_output_error(out, "out of memory"); return 1; }
  c->value = 0;
  if (nargs == 1 && args[0].len == sizeof c->value) memcpy(&c->value, args[0].data, sizeof c->value);
  *state = c;
  return 0;
}

static void counter_free(void *state, void *user) {
  (void)user;
  free(state);
}

static int32_t counter_add(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)nargs; (void)user;
  counter *c = state;
  int64_t by;
  memcpy(&by, args[0].data, sizeof by);
  c->value += by;
  return rayhpc_output_set(out, &c->value, sizeof c->value) == RAYHPC_OK ? 0 : 1;
}

static int32_t counter_get(void *state, const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)user;
  counter *c = state;
  return rayhpc_output_set(out, &c->value, sizeof c->value) == RAYHPC_OK ? 0 : 1;
}

int main(void) {
  rayhpc_method methods[] = {{"add", counter_add, 1}, {"get", counter_get, 0}};
  CHECK(rayhpc_register_class("Counter", counter_new, counter_free, methods, 2, NULL));
  CHECK(rayhpc_init(NULL));
  int64_t start = 100;
  rayhpc_arg a0 = {RAYHPC_ARG_BYTES, {(const uint8_t *)&start, sizeof start}, 0};
  rayhpc_actor c;
  CHECK(rayhpc_actor_create("Counter", &a0, 1, NULL, &c));
  rayhpc_ref refs[10];
  for (int64_t i = 0; i < 10; i++) {
    int64_t by = i + 1;
    rayhpc_arg a = {RAYHPC_ARG_BYTES, {(const uint8_t *)&by, sizeof by}, 0};
    CHECK(rayhpc_actor_call(c, "add", &a, 1, &refs[i]));
  }
  int64_t last = 0;
  size_t len;
  for (int i = 0; i < 10; i++) {
    CHECK(rayhpc_get_into(refs[i], -1, &last, sizeof last, &len)); /* 101, 103, 106, ... */
    CHECK(rayhpc_ref_release(refs[i]));
  }
  printf("counter after 1+2+...+10 from 100: %lld\n", (long long)last);
  CHECK(rayhpc_actor_kill(c));
  rayhpc_ref r;
  CHECK(rayhpc_actor_call(c, "get", NULL, 0, &r));
  rayhpc_status s = rayhpc_get_into(r, -1, &last, sizeof last, &len);
  printf("a call after kill: %s\n", rayhpc_status_name(s));
  CHECK(rayhpc_ref_release(r));
  CHECK(rayhpc_actor_release(c));
  CHECK(rayhpc_shutdown());
  return s == RAYHPC_E_ACTOR_DIED && last == 155 ? 0 : 1;
}
