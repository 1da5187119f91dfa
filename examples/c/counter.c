/* counter: an actor. Its state (a counter) lives in the runtime; calls run one at a time, in
 * the order they were made; kill ends it (its destructor frees the state). The class is
 * counter_class.c's definition:
 * - embedded, registered in this process:
 *     cc counter.c counter_class.c $(pkg-config --cflags --libs rayhpc) -o counter && ./counter
 * - attached to a node runtime, which loads it from a shared library by name:
 *     cc -shared -fPIC counter_class.c $(pkg-config --cflags --libs rayhpc) -o libcounter.so
 *     rayhpc launch -- ./counter $PWD/libcounter.so */
#include <stdint.h>
#include <string.h>
#include "check.h"

extern const rayhpc_class_def counter_class;

int main(int argc, char **argv) {
  char cls[4096] = "Counter";
  if (argc > 1) {
    snprintf(cls, sizeof cls, "%s:counter_class", argv[1]); /* the node loads it */
  } else {
    const rayhpc_class_def *d = &counter_class;
    CHECK(rayhpc_register_class(d->name, d->ctor, d->dtor, d->methods, d->nmethods, d->user));
  }
  CHECK(rayhpc_init(NULL));
  int64_t start = 100;
  rayhpc_arg a0 = {RAYHPC_ARG_BYTES, {(const uint8_t *)&start, sizeof start}, 0};
  rayhpc_actor c;
  CHECK(rayhpc_actor_create(cls, &a0, 1, NULL, &c));
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
  rayhpc_ref r;
  rayhpc_status s = rayhpc_actor_call(c, "add", NULL, 0, &r);
  printf("a call with a wrong count: %s\n", rayhpc_status_name(s));
  CHECK(rayhpc_actor_kill(c));
  CHECK(rayhpc_actor_call(c, "get", NULL, 0, &r));
  s = rayhpc_get_into(r, -1, &last, sizeof last, &len);
  printf("a call after kill: %s\n", rayhpc_status_name(s));
  CHECK(rayhpc_ref_release(r));
  CHECK(rayhpc_actor_release(c));
  CHECK(rayhpc_shutdown());
  return s == RAYHPC_E_ACTOR_DIED && last == 155 ? 0 : 1;
}
