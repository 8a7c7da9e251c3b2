/* Why scripts/test --sanitize thread leaves out the tests that need the Kafka broker: a thread started with C11
 * thrd_create (what Debian's librdkafka uses) crashes ThreadSanitizer's runtime as soon as it calls an intercepted
 * function, with nothing of ours involved. Reproduce:
 *   gcc -fsanitize=thread -g tests/sanitizers/thrd_create.c -o /tmp/thrd && /tmp/thrd
 *   (also clang -fsanitize=thread): "ThreadSanitizer: SEGV on unknown address" instead of "ok".
 * Checked with Debian 12's gcc 12.2 and clang 14. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <threads.h>

static int run(void* arg) {
  (void)arg;
  void* block = malloc(100);
  pthread_mutex_t m;
  pthread_mutex_init(&m, NULL);
  pthread_mutex_lock(&m);
  pthread_mutex_unlock(&m);
  free(block);
  return 0;
}

int main(void) {
  thrd_t t;
  int result = 0;
  if (thrd_create(&t, run, NULL) != thrd_success) return 1;
  thrd_join(t, &result);
  puts("ok");
  return 0;
}
