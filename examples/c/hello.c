/* hello: a task that adds two numbers.
 *   cc hello.c $(pkg-config --cflags --libs rayhpc) -o hello && ./hello */
#include <stdint.h>
#include <string.h>
#include "check.h"

static int32_t add(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)nargs; (void)user;
  int64_t a, b;
  if (args[0].len != sizeof a || args[1].len != sizeof b) {
    rayhpc_output_error(out, "add takes two int64 values");
    return 1;
  }
  memcpy(&a, args[0].data, sizeof a);
  memcpy(&b, args[1].data, sizeof b);
  int64_t c = a + b;
  return rayhpc_output_set(out, &c, sizeof c) == RAYHPC_OK ? 0 : 1;
}

int main(void) {
  CHECK(rayhpc_register("add", add, NULL, 2));
  CHECK(rayhpc_init(NULL));
  int64_t x = 40, y = 2, z = 0;
  rayhpc_arg args[2] = {
      {RAYHPC_ARG_BYTES, {(const uint8_t *)&x, sizeof x}, 0},
      {RAYHPC_ARG_BYTES, {(const uint8_t *)&y, sizeof y}, 0},
  };
  rayhpc_ref r;
  CHECK(rayhpc_submit("add", args, 2, NULL, &r)); /* a future, at once */
  size_t len;
  CHECK(rayhpc_get_into(r, -1, &z, sizeof z, &len)); /* waits for it */
  printf("%lld + %lld = %lld\n", (long long)x, (long long)y, (long long)z);
  CHECK(rayhpc_ref_release(r));
  CHECK(rayhpc_shutdown());
  return z == 42 ? 0 : 1;
}
