/* One thread's pace through cpu_step.c's `linear` at B rows, K = 576 (SmolLM2's hidden size), float32
 * against bfloat16 panels, in GB/s of weights read per second of the thread's own CPU time (so the
 * other processes on a busy machine do not count). N = 256 keeps the panels in L2; N = 49152
 * (the LM head) streams them from memory.
 *   cc -O3 -march=native -ffast-math -fopenmp -o linear_bench linear_bench.c -lm
 *   ./linear_bench N REPEATS B */
#include "../../../../nvllm/kernels/cpu_step.c"
#include <stdio.h>
#include <time.h>
static double now(void){struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc, char **argv){
  int64_t K = 576, N = atoi(argv[1]); int reps = atoi(argv[2]); int64_t B = atoi(argv[3]);
  float *x = calloc(K*B, 4), *y = calloc((N + 16)*B, 4);
  void *w32 = calloc((N+16)*K, 4), *w16 = calloc((N+16)*K, 2);
  Model m32 = {0}, m16 = {0}; m32.weights = F32; m16.weights = BF16;
  for (int f = 0; f < 2; ++f) {
    Model *m = f ? &m16 : &m32; void *w = f ? w16 : w32;
    double t0 = now();
    for (int r = 0; r < reps; ++r) {
      #pragma omp parallel num_threads(1)
      linear(m, x, B, K, w, NULL, N, y);
    }
    double dt = now() - t0;
    printf("%s N=%ld: %.1f GB/s\n", f ? "bf16" : "f32", N, (double)N*K*(f?2:4)*reps/dt/1e9);
  }
}
