/* where.c: a native task function for the Rust attached example (launcher/examples/attached.rs):
 * sleeps the milliseconds it is given (an 8-byte integer), then answers the process id of
 * the node runtime that ran it (4 bytes), so that the driver sees where its tasks ran.
 *   cc -shared -fPIC where.c $(pkg-config --cflags --libs rayhpc) -o libwhere.so */
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c99 */
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <rayhpc.h>

int32_t where(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  if (nargs != 1 || args[0].len != sizeof(int64_t)) {
    rayhpc_output_error(out, "where takes one 8-byte integer (milliseconds)");
    return 1;
  }
  int64_t ms;
  memcpy(&ms, args[0].data, sizeof ms);
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
  uint32_t pid = (uint32_t)getpid();
  return rayhpc_output_set(out, &pid, sizeof pid) == RAYHPC_OK ? 0 : 1;
}
