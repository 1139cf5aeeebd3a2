/* The few libc calls fastpath.c makes, on raw Linux system calls (x86_64 and aarch64), so the fast
 * path can be built with -nostdlib (docs/simulator-tools.md, "The compiled fast path").
 *
 * Why: on this kind of VM a static glibc program spends ~0.3 ms starting (its CPU-feature probing
 * traps on every CPUID); `deploy check-network` on 64 A3 nodes runs ~24,000 fake-tool calls, so
 * the simulator's own start-up is most of the simulated nodes' CPU.  Without libc a call costs
 * about what the exec itself costs.  Only what fastpath.c uses is here, with the same meaning:
 * stdout is buffered until fflush/exit (as glibc does for a pipe), stderr is not.  Another
 * architecture, or a compiler that refuses these flags: tools.py builds with libc instead.
 */
#ifndef FASTPATH_NOLIBC_H
#define FASTPATH_NOLIBC_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef long ssize_t;
typedef long off_t;
typedef long time_t;

#if defined(__x86_64__)
enum { SYS_read = 0, SYS_write = 1, SYS_close = 3, SYS_lseek = 8, SYS_nanosleep = 35, SYS_execve = 59,
       SYS_flock = 73, SYS_getdents64 = 217, SYS_exit_group = 231, SYS_openat = 257, SYS_newfstatat = 262,
       SYS_readlinkat = 267 };
static long sc6(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}
__asm__(".text\n.global _start\n_start:\n\txor %rbp, %rbp\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall fp_cstart\n\thlt\n");
#elif defined(__aarch64__)
enum { SYS_read = 63, SYS_write = 64, SYS_close = 57, SYS_lseek = 62, SYS_nanosleep = 101, SYS_execve = 221,
       SYS_flock = 32, SYS_getdents64 = 61, SYS_exit_group = 94, SYS_openat = 56, SYS_newfstatat = 79,
       SYS_readlinkat = 78 };
static long sc6(long n, long a, long b, long c, long d)
{
	register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c,
		      x3 __asm__("x3") = d;
	__asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
	return x0;
}
__asm__(".text\n.global _start\n_start:\n\tmov x0, sp\n\tbl fp_cstart\n");
#else
#error "no raw system calls for this architecture: build with libc"
#endif

#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_WRONLY 01
#define O_CREAT 0100
#define O_APPEND 02000
#define O_CLOEXEC 02000000
#define LOCK_EX 2
#define LOCK_NB 4
#define EINTR 4
#define SEEK_END 2

int errno;
static char **environ;

static long sys(long n, long a, long b, long c, long d)
{
	long r = sc6(n, a, b, c, d);
	if (r < 0 && r > -4096) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

/* ---- memory and strings ---- */
void *memcpy(void *d, const void *s, size_t n)
{
	char *a = d;
	const char *b = s;
	while (n--)
		*a++ = *b++;
	return d;
}
void *memset(void *d, int c, size_t n)
{
	char *a = d;
	while (n--)
		*a++ = (char)c;
	return d;
}
void *memmove(void *d, const void *s, size_t n)
{
	char *a = d;
	const char *b = s;
	if (a < b)
		while (n--)
			*a++ = *b++;
	else
		while (n--)
			a[n] = b[n];
	return d;
}
int memcmp(const void *x, const void *y, size_t n)
{
	const unsigned char *a = x, *b = y;
	for (; n; n--, a++, b++)
		if (*a != *b)
			return *a - *b;
	return 0;
}
size_t strlen(const char *s)
{
	const char *p = s;
	while (*p)
		p++;
	return (size_t)(p - s);
}
static int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}
static int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++)
		if (*a != *b || !*a)
			return (unsigned char)*a - (unsigned char)*b;
	return 0;
}
static char *strchr(const char *s, int c)
{
	for (;; s++) {
		if (*s == (char)c)
			return (char *)s;
		if (!*s)
			return NULL;
	}
}
static char *strrchr(const char *s, int c)
{
	const char *r = NULL;
	for (;; s++) {
		if (*s == (char)c)
			r = s;
		if (!*s)
			return (char *)r;
	}
}
static char *strstr(const char *h, const char *n)
{
	size_t k = strlen(n);
	for (; *h; h++)
		if (!strncmp(h, n, k))
			return (char *)h;
	return k ? NULL : (char *)h;
}
static void *memchr(const void *s, int c, size_t n)
{
	const unsigned char *p = s;
	for (; n; n--, p++)
		if (*p == (unsigned char)c)
			return (void *)p;
	return NULL;
}
static const char *strerror(int e)
{
	(void)e;
	return "system call failed";
}

/* ---- numbers: base 10 only, as fastpath.c uses them ---- */
static long long strtoll10(const char *s, char **end)
{
	long long v = 0;
	int neg = 0;
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f' || *s == '\v')
		s++;
	if (*s == '+' || *s == '-')
		neg = *s++ == '-';
	const char *start = s;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (*s++ - '0');
	if (end)
		*end = (char *)s; /* no digits: glibc points back at the start; fastpath.c rejects both */
	(void)start;
	return neg ? -v : v;
}
static long strtol(const char *s, char **end, int base)
{
	(void)base;
	return (long)strtoll10(s, end);
}
static unsigned long strtoul(const char *s, char **end, int base)
{
	(void)base;
	return (unsigned long)strtoll10(s, end);
}
static long atol(const char *s) { return (long)strtoll10(s, NULL); }
static int atoi(const char *s) { return (int)strtoll10(s, NULL); }
static long long atoll(const char *s) { return strtoll10(s, NULL); }

/* ---- memory: one bump arena (the largest .fp file plus change) ---- */
static char arena[(4L << 20) + (64L << 10)];
static size_t arena_used;
static void *malloc(size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (n > sizeof arena - arena_used)
		return NULL;
	void *p = arena + arena_used;
	arena_used += n;
	return p;
}
static char *strndup(const char *s, size_t n)
{
	size_t k = 0;
	while (k < n && s[k])
		k++;
	char *p = malloc(k + 1);
	if (p) {
		memcpy(p, s, k);
		p[k] = 0;
	}
	return p;
}
static char *getenv(const char *name)
{
	size_t k = strlen(name);
	for (char **e = environ; e && *e; e++)
		if (!strncmp(*e, name, k) && (*e)[k] == '=')
			return *e + k + 1;
	return NULL;
}

/* ---- files ---- */
struct stat {
	long long st_size;
};
static int open(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	int mode = (flags & O_CREAT) ? va_arg(ap, int) : 0;
	va_end(ap);
	return (int)sys(SYS_openat, AT_FDCWD, (long)path, flags, mode);
}
static int close(int fd) { return (int)sys(SYS_close, fd, 0, 0, 0); }
static ssize_t read(int fd, void *b, size_t n) { return sys(SYS_read, fd, (long)b, (long)n, 0); }
static ssize_t write(int fd, const void *b, size_t n) { return sys(SYS_write, fd, (long)b, (long)n, 0); }
static int flock(int fd, int op) { return (int)sys(SYS_flock, fd, op, 0, 0); }
static ssize_t readlink(const char *p, char *b, size_t n) { return sys(SYS_readlinkat, AT_FDCWD, (long)p, (long)b, (long)n); }
static int stat(const char *path, struct stat *st) /* the kernel's struct stat has st_size at 48 */
{
	long long k[32];
	if (sys(SYS_newfstatat, AT_FDCWD, (long)path, (long)k, 0) != 0)
		return -1;
	st->st_size = k[6];
	return 0;
}
static int fstat(int fd, struct stat *st)
{
	long long k[32];
	if (sys(SYS_newfstatat, fd, (long)"", (long)k, 0x1000 /* AT_EMPTY_PATH */) != 0)
		return -1;
	st->st_size = k[6];
	return 0;
}
struct timespec {
	time_t tv_sec;
	long tv_nsec;
};
static int nanosleep(const struct timespec *t, struct timespec *rem) { return (int)sys(SYS_nanosleep, (long)t, (long)rem, 0, 0); }
static int execv(const char *path, char *const argv[]) { return (int)sys(SYS_execve, (long)path, (long)argv, (long)environ, 0); }

/* ---- directories: getdents64 ---- */
struct dirent {
	unsigned long long d_ino;
	long long d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};
typedef struct {
	int fd;
	long len, pos;
	char buf[4096] __attribute__((aligned(8)));
} DIR;
static DIR dirs[2]; /* fastpath.c holds at most two open at once */
static DIR *opendir(const char *path)
{
	for (int i = 0; i < 2; i++)
		if (!dirs[i].fd) {
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				return NULL;
			dirs[i].fd = fd + 1; /* 0: free slot */
			dirs[i].len = dirs[i].pos = 0;
			return &dirs[i];
		}
	return NULL;
}
static struct dirent *readdir(DIR *d)
{
	if (d->pos >= d->len) {
		d->len = sys(SYS_getdents64, d->fd - 1, (long)d->buf, sizeof d->buf, 0);
		d->pos = 0;
		if (d->len <= 0)
			return NULL;
	}
	struct dirent *e = (struct dirent *)(d->buf + d->pos);
	d->pos += e->d_reclen;
	return e;
}
static int closedir(DIR *d)
{
	close(d->fd - 1);
	d->fd = 0;
	return 0;
}

/* ---- stdio: stdout buffered until fflush or exit, stderr written at once ---- */
typedef struct {
	int fd;
} FILE;
static FILE fp_out = {1}, fp_err = {2};
#define stdout (&fp_out)
#define stderr (&fp_err)
static char obuf[65536];
static size_t olen;

static void put_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}
static int fflush(FILE *f)
{
	if (f == stdout && olen) {
		put_all(1, obuf, olen);
		olen = 0;
	}
	return 0;
}
static size_t fwrite(const void *p, size_t size, size_t n, FILE *f)
{
	size_t len = size * n;
	if (f != stdout) {
		put_all(f->fd, p, len);
		return n;
	}
	if (olen + len > sizeof obuf) {
		fflush(stdout);
		if (len > sizeof obuf) {
			put_all(1, p, len);
			return n;
		}
	}
	memcpy(obuf + olen, p, len);
	olen += len;
	return n;
}
static int fputs(const char *s, FILE *f) { return (int)fwrite(s, 1, strlen(s), f); }

/* The formats fastpath.c uses: %s %.Ns %.*s %d %ld %lld %0Nlld %u %%. Returns the length it
 * would have written (as vsnprintf), writing at most cap - 1 bytes and a NUL. */
static int vsnprintf(char *out, size_t cap, const char *f, va_list ap)
{
	size_t n = 0;
#define PUT(c) do { if (n + 1 < cap) out[n] = (c); n++; } while (0)
	for (; *f; f++) {
		if (*f != '%') {
			PUT(*f);
			continue;
		}
		f++;
		int zero = 0, width = 0, prec = -1, lng = 0;
		if (*f == '0')
			zero = 1, f++;
		while (*f >= '0' && *f <= '9')
			width = width * 10 + (*f++ - '0');
		if (*f == '.') {
			f++;
			if (*f == '*')
				prec = va_arg(ap, int), f++;
			else
				for (prec = 0; *f >= '0' && *f <= '9'; f++)
					prec = prec * 10 + (*f - '0');
		}
		while (*f == 'l')
			lng++, f++;
		if (*f == 's') {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			for (int i = 0; s[i] && (prec < 0 || i < prec); i++)
				PUT(s[i]);
		} else if (*f == 'd' || *f == 'u') {
			long long v = lng >= 2 ? va_arg(ap, long long) : lng ? va_arg(ap, long) : va_arg(ap, int);
			if (*f == 'u' && !lng)
				v = (unsigned int)v;
			char tmp[24];
			int k = 0, neg = v < 0;
			unsigned long long u = neg ? 0ULL - (unsigned long long)v : (unsigned long long)v;
			do
				tmp[k++] = (char)('0' + u % 10);
			while (u /= 10);
			if (neg)
				PUT('-');
			for (int pad = width - k - neg; pad > 0; pad--)
				PUT(zero ? '0' : ' ');
			while (k)
				PUT(tmp[--k]);
		} else if (*f == '%') {
			PUT('%');
		} else {
			return -1; /* a format this file never uses */
		}
	}
	if (cap)
		out[n < cap ? n : cap - 1] = 0;
	return (int)n;
#undef PUT
}
static int snprintf(char *out, size_t cap, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(out, cap, f, ap);
	va_end(ap);
	return n;
}
static int sprintf(char *out, const char *f, ...) /* only for short, bounded strings */
{
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(out, 4096, f, ap);
	va_end(ap);
	return n;
}
static int vfprintf(FILE *fp, const char *f, va_list ap)
{
	char buf[8192];
	int n = vsnprintf(buf, sizeof buf, f, ap);
	if (n > 0)
		fwrite(buf, 1, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, fp);
	return n;
}
static int fprintf(FILE *fp, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = vfprintf(fp, f, ap);
	va_end(ap);
	return n;
}
static int printf(const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = vfprintf(stdout, f, ap);
	va_end(ap);
	return n;
}

__attribute__((noreturn)) static void exit(int rc)
{
	fflush(stdout);
	for (;;)
		sc6(SYS_exit_group, rc, 0, 0, 0);
}

int main(int argc, char **argv);
__attribute__((used, noreturn)) void fp_cstart(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	environ = argv + argc + 1;
	exit(main(argc, argv));
}

#endif
