/* Multiply-add lanes a second on one core, 12 independent accumulators of 8-float and of 16-float
 * vectors: whether the CPU runs 512-bit multiply-adds at full width.
 *     gcc -O3 -march=native -ffast-math fma_rate.c -o fma_rate && ./fma_rate > fma_rate.out */
#include <stdio.h>
#include <time.h>
typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  const long N=200000000;
  {v8 a[12]; v8 x=(v8){1.0001f,1,1,1,1,1,1,1}, y=(v8){0.9999f,1,1,1,1,1,1,1};
   for(int i=0;i<12;i++) a[i]=(v8){0};
   double t=now();
   for(long n=0;n<N;n++){ for(int i=0;i<12;i++) a[i]+=x*y; __asm__ volatile("" : "+x"(x)); }
   t=now()-t; float s=0; for(int i=0;i<12;i++) s+=a[i][0];
   printf("v8: %.1f GFMA/s (flop-lanes) %f\n", N*12.0*8/t/1e9, s);}
  {v16 a[12]; v16 x={1.0001f}, y={0.9999f};
   for(int i=0;i<12;i++) a[i]=(v16){0};
   double t=now();
   for(long n=0;n<N;n++){ for(int i=0;i<12;i++) a[i]+=x*y; __asm__ volatile("" : "+v"(x)); }
   t=now()-t; float s=0; for(int i=0;i<12;i++) s+=a[i][0];
   printf("v16: %.1f GFMA/s %f\n", N*12.0*16/t/1e9, s);}
}
