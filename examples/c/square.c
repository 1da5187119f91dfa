/* square.c: native task functions in a shared library, for a node runtime to load by name
 * ("path/libsquare.so:square"): what a C program attached to `rayhpc launch` runs.
 *   cc -shared -fPIC square.c $(pkg-config --cflags --libs rayhpc) -o libsquare.so */
#include <stdint.h>
#include <string.h>
#include <rayhpc.h>

/* One 8-byte integer in, its square out. */
int32_t square(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  if (nargs != 1 || args[0].len != sizeof(int64_t)) {
    rayhpc_output_error(out, "square takes one 8-byte integer");
    return 1;
  }
  int64_t x;
  memcpy(&x, args[0].data, sizeof x);
  x *= x;
  return rayhpc_output_set(out, &x, sizeof x) == RAYHPC_OK ? 0 : 1;
}
