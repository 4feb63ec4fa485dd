/*
 * Page-fault microbenchmark for `cargo xtask bench faults`.
 *
 *   faults MIB REPS [PAUSE_MS]     (REPS 0: until killed; MIB may be NNNk for KiB)
 *
 * With PAUSE_MS, it sleeps that long after each repetition and prints nothing: a cgroup that
 * charges a little, steadily (the scale benchmark runs thousands of them).
 * Each repetition maps MIB MiB of anonymous memory (no huge pages), writes one byte per page
 * (one minor fault, one memcg charge each), and unmaps it (uncharge). It prints one line per
 * repetition: when it started (CLOCK_MONOTONIC ns), the pages touched, the minor faults
 * counted by the kernel, and the thread CPU time and the wall time of the whole cycle
 * (mmap + faults + munmap) in ns.
 *
 * Thread CPU time (CLOCK_THREAD_CPUTIME_ID, the scheduler's exact runtime) includes the kernel
 * work done in this thread's context, eBPF programs on the fault path included, and excludes
 * the time other tasks ran on this CPU: on a shared machine it is the steadier measure.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(clockid_t clock)
{
	struct timespec t;
	clock_gettime(clock, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long minflt(void)
{
	struct rusage ru;
	getrusage(RUSAGE_THREAD, &ru);
	return ru.ru_minflt;
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: faults MIB REPS [PAUSE_MS]\n");
		return 2;
	}
	char *unit;
	size_t len = (size_t)strtol(argv[1], &unit, 10) << (*unit == 'k' ? 10 : 20);
	int reps = atoi(argv[2]);
	long pause_ms = argc == 4 ? atol(argv[3]) : -1;
	long page = sysconf(_SC_PAGESIZE);
	for (int r = 0; reps == 0 || r < reps; r++) {
		long f0 = minflt();
		long long w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
		volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		madvise((void *)p, len, MADV_NOHUGEPAGE);
		for (size_t i = 0; i < len; i += (size_t)page)
			p[i] = 1;
		munmap((void *)p, len);
		long long c1 = now_ns(CLOCK_THREAD_CPUTIME_ID), w1 = now_ns(CLOCK_MONOTONIC);
		long f1 = minflt();
		if (pause_ms >= 0) {
			struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
			nanosleep(&ts, NULL);
			continue;
		}
		printf("rep %d start_ns %lld pages %zu minflt %ld cpu_ns %lld wall_ns %lld\n", r, w0, len / (size_t)page,
		       f1 - f0, c1 - c0, w1 - w0);
		fflush(stdout);
	}
	return 0;
}
