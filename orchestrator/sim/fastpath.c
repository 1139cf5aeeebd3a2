/* Compiled fast path of the simulator's fake hccn_tool and npu-smi (docs/simulator-tools.md).
 *
 * install_tools() compiles this file into DIR/bin and installs it as both hccn_tool and npu-smi
 * (argv[0] picks the tool).  The sh scripts, installed next to it as hccn_tool.sh and npu-smi.sh,
 * stay the reference implementation.  This program answers only the hot read-only calls (hccn_tool
 * gets, -ping, -hccs_ping; npu-smi info queries), from files save_state() pre-renders for it:
 * render/dev<N>.fp and render/smi/all.fp.  For anything else (set commands, arguments it does not
 * fully understand, a busy node, a missing or unexpected file) it execv()s the sh script with the
 * same argv.  It decides before printing anything, so a fallback is always byte-identical, and the
 * locking, busy-counter and persistence logic stays in one place (the sh script).
 *
 * Why: check-network runs ~24,000 tool calls.  Under dash one costs ~0.85-0.95 ms (start-up and
 * script parsing); this binary with glibc ~0.45 ms, nearly all of it process creation and libc
 * start-up; built with -DFASTPATH_NOLIBC -nostdlib (nolibc.h, tools.py tries that first) ~0.15 ms.
 *
 * .fp format (written by state.py _fp_text): the line "fastpath 1", then records
 *   <key> <rc> <stdout bytes> <stderr bytes>\n<stdout>\n<stderr>\n
 * Keys: "-link" ... "-optical" (the exact answer of `-i N -<cmd> -g`), scalars (node, soc, pod,
 * dev, ip, link, vlink, t0..t2, hns, wait_us) in dev<N>.fp, and npu-smi's keys (info, list, map,
 * board_N[_C], health_N[_C], spod_N[_C]) in all.fp.
 */
#ifdef FASTPATH_NOLIBC /* built with -nostdlib: raw system calls (nolibc.h), no libc start-up */
#include "nolibc.h"
#else
#define _DEFAULT_SOURCE /* flock */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#endif

#define MAGIC "fastpath 1\n"
#define MAXREC 256
#define MAXFILE (4L << 20)

struct rec {
	char *key, *out, *err;
	size_t olen, elen;
	int rc;
};

static struct rec recs[MAXREC];
static int nrec;
static char **args;
static const char *tool;       /* "hccn_tool" or "npu-smi" */
static const char *node, *root; /* $DEPLOY_SIM_NODE and DIR, as the sh scripts compute them */

/* Hand the call to the reference implementation: <dir of this binary>/<tool>.sh, same argv. */
static void fallback(void)
{
	char path[4096];
	ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
	char *slash = NULL;
	if (n > 0) {
		path[n] = 0;
		slash = strrchr(path, '/');
	}
	if (slash) {
		sprintf(slash + 1, "%s.sh", tool);
		execv(path, args);
	}
	fprintf(stderr, "%s: cannot run the sh implementation: %s\n", tool, strerror(errno));
	exit(127);
}

/* A path built from fmt; too long: fall back. Returns a static buffer (one path at a time). */
static const char *fmt(const char *f, ...)
{
	static char buf[4096];
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(buf, sizeof buf, f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof buf)
		fallback();
	return buf;
}

static int exists(const char *path) /* sh: [ -e path ] */
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int digits(const char *s) /* non-empty, [0-9] only */
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

/* n.n.n...: the only ping targets handled here (anything else goes to sh) */
static int dotted(const char *s)
{
	for (;;) {
		if (*s < '0' || *s > '9')
			return 0;
		while (*s >= '0' && *s <= '9')
			s++;
		if (!*s)
			return 1;
		if (*s++ != '.')
			return 0;
	}
}

static void env(void)
{
	node = getenv("DEPLOY_SIM_NODE");
	if (!node || !*node)
		fallback(); /* sh prints the error */
	root = getenv("DEPLOY_SIM_ROOT");
	if (!root || !*root) { /* as sh: cut N at its last "/nodes/" */
		const char *cut = NULL, *p = node;
		while ((p = strstr(p, "/nodes/")))
			cut = p++;
		root = cut ? strndup(node, (size_t)(cut - node)) : node;
	}
}

/* Read and index a .fp file; any problem (missing, other version, malformed): fall back. */
static void load(const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY);
	if (fd < 0 || fstat(fd, &st) != 0 || st.st_size > MAXFILE)
		fallback();
	size_t n = 0, size = (size_t)st.st_size;
	char *buf = malloc(size + 1);
	ssize_t r;
	while (buf && n < size && (r = read(fd, buf + n, size - n)) > 0)
		n += (size_t)r;
	close(fd);
	if (!buf || n != size || n < strlen(MAGIC) || memcmp(buf, MAGIC, strlen(MAGIC)))
		fallback();
	buf[n] = 0;
	char *p = buf + strlen(MAGIC), *end = buf + n;
	while (p < end) {
		struct rec *rc = &recs[nrec];
		char *sp = memchr(p, ' ', (size_t)(end - p));
		if (nrec == MAXREC || !sp)
			fallback();
		*sp = 0;
		rc->key = p;
		rc->rc = (int)strtol(sp + 1, &p, 10);
		rc->olen = strtoul(p, &p, 10);
		rc->elen = strtoul(p, &p, 10);
		size_t room = (size_t)(end - p); /* p is at the '\n' before stdout */
		if (*p != '\n' || rc->olen > room || rc->elen > room - rc->olen || room - rc->olen - rc->elen < 3)
			fallback();
		rc->out = p + 1;
		rc->err = p + 2 + rc->olen;
		if (rc->out[rc->olen] != '\n' || rc->err[rc->elen] != '\n')
			fallback();
		rc->out[rc->olen] = rc->err[rc->elen] = 0; /* scalars are used as C strings */
		p = rc->err + rc->elen + 1;
		nrec++;
	}
}

static const struct rec *find(const char *key)
{
	for (int i = 0; i < nrec; i++)
		if (!strcmp(recs[i].key, key))
			return &recs[i];
	return NULL;
}

static const char *val(const char *key) /* a scalar of dev<N>.fp */
{
	const struct rec *r = find(key);
	if (!r)
		fallback();
	return r->out;
}

static void emit(const struct rec *r) /* sh: printf '%s\n' "$o"; printf '%s\n' "$e" >&2; exit $r */
{
	fwrite(r->out, 1, r->olen, stdout);
	fflush(stdout);
	fwrite(r->err, 1, r->elen, stderr);
	exit(r->rc);
}

/* Does some device listed in DIR/<index> answer?  sh: the loop over "$R/<index>"/<node>@<dev>.
 * up: "up" (RoCE link; the die-pair rule applies) or "vup" (vNIC link). */
static int answered(const char *index, const char *up)
{
	DIR *dir = opendir(index); /* first: index is fmt()'s buffer */
	const char *me = val("node"), *dev = val("dev");
	int a3 = !strcmp(val("soc"), "a3"), ok = 0;
	struct dirent *e;
	while (dir && !ok && (e = readdir(dir))) {
		char tn[256];
		const char *at = strrchr(e->d_name, '@'), *td = at ? at + 1 : "";
		if (e->d_name[0] == '.')
			continue; /* the glob skips dot files */
		/* index entries are <node>@<canonical dev>; anything else: let sh decide */
		if (!at || !digits(td) || strlen(td) > 9 || (td[0] == '0' && td[1]))
			fallback();
		snprintf(tn, sizeof tn, "%.*s", (int)(at - e->d_name), e->d_name);
		if (exists(fmt("%s/render/noping/%s", node, tn)) || exists(fmt("%s/nodes/%s/render/noping/%s", root, tn, me)))
			continue; /* a ping-loss fault either way */
		if (!strcmp(up, "up") && a3 && !strcmp(tn, me) && strcmp(td, dev) && atoi(td) / 2 == atoi(dev) / 2)
			continue; /* the other die of the same NPU: no RoCE path */
		ok = exists(fmt("%s/nodes/%s/render/%s%s", root, tn, up, td));
	}
	if (dir)
		closedir(dir);
	return ok;
}

/* A ping in flight holds its device: hccn_tool answers "The device is occupied" to a second ping
 * on the same device (ascend-tools.md 1.10; rc 11 as every busy answer).  The hold is a flock on
 * DIR/nodes/<n>/pings/dev<N>.lock, released when the process ends, so a killed ping never leaves
 * a device busy.  Then the ping takes wait_us (`deploy sim up --ping-latency`; 0: CPU only).  Every
 * answered ping is logged as "<dev> <-ping|-hccs_ping> <address> <rc>" in pings/log (O_APPEND, one
 * write), so tests see what each node was asked.  Same as the sh script's _inflight and _done. */
static const char *pcmd, *paddr;

static void done(int rc)
{
	char line[600];
	fflush(stdout);
	int n = snprintf(line, sizeof line, "%s %s %.500s %d\n", val("dev"), pcmd, paddr, rc);
	int fd = open(fmt("%s/pings/log", node), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
	if (fd >= 0) {
		if (write(fd, line, (size_t)n) < 0) { /* a lost log line changes no answer */
		}
		close(fd);
	}
	exit(rc);
}

static void inflight(const char *cmd, const char *addr)
{
	long long us = atoll(val("wait_us"));
	int fd = open(fmt("%s/pings/dev%s.lock", node, val("dev")), O_RDONLY | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0)
		fallback(); /* no pings/ folder: sh says what is wrong */
	pcmd = cmd;
	paddr = addr;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		fputs("The device is occupied. Please try again later.\n", stderr);
		done(11);
	}
	if (us > 0) {
		struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
}

/* hccn_tool -i N -ping -g address A.B.C.D [pkt LEN] */
static void ping(int argc, char **argv)
{
	if ((argc != 7 && argc != 9) || strcmp(argv[4], "-g") || strcmp(argv[5], "address"))
		fallback();
	if (argc == 9 && (strcmp(argv[7], "pkt") || !digits(argv[8]) || strlen(argv[8]) > 5 || atol(argv[8]) > 65507))
		fallback();
	const char *t = argv[6];
	if (!dotted(t))
		fallback();
	int ok = !strcmp(val("link"), "UP") && *val("ip") && answered(fmt("%s/addr/%s", root, t), "up");
	inflight("-ping", t);
	printf("device %s PING %s\n", val("dev"), t);
	if (ok) {
		printf("recv seq=0,time=%sms\nrecv seq=1,time=%sms\nrecv seq=2,time=%sms\n", val("t0"), val("t1"), val("t2"));
		printf("3 packets transmitted, 3 received, 0.00%% packet loss\n");
		done(0);
	}
	printf("recv time out seq=0\nrecv time out seq=1\nrecv time out seq=2\n");
	printf("3 packets transmitted, 0 received, 100.00%% packet loss\n");
	fflush(stdout);
	fputs("Command execute failed!\n", stderr);
	done(1);
}

/* value of a numeric hccs_ping option, or fall back if it is out of the sh tool's range */
static long opt(const char *v, size_t maxlen, long lo, long hi)
{
	if (!digits(v) || strlen(v) > maxlen || atol(v) < lo || atol(v) > hi)
		fallback();
	return atol(v);
}

/* hccn_tool -i N -hccs_ping -g address <vnic ip> [pkt P] [cnt C] [interval I] [timeout T] (A3) */
static void hccs_ping(int argc, char **argv)
{
	const char *t = NULL;
	long cnt = 3;
	if (strcmp(val("soc"), "a3") || strcmp(argv[4], "-g") || (argc - 5) % 2)
		fallback();
	for (int i = 5; i < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "address") && dotted(v))
			t = v;
		else if (!strcmp(k, "pkt"))
			opt(v, 5, 1792, 3000);
		else if (!strcmp(k, "cnt"))
			cnt = opt(v, 4, 1, 1000);
		else if (!strcmp(k, "interval"))
			opt(v, 2, 0, 10);
		else if (!strcmp(k, "timeout"))
			opt(v, 5, 1, 20000);
		else
			fallback();
	}
	/* the tool decodes 192.<server_id>.<2+die>.<199-dev> and rejects server_id >= 48 */
	if (!t || strncmp(t, "192.", 4))
		fallback();
	const char *s = t + 4, *dot = strchr(s, '.');
	if (!dot || !strchr(dot + 1, '.') || dot - s > 3 || atoi(s) >= 48)
		fallback();
	int ok = !strcmp(val("vlink"), "UP") && answered(fmt("%s/vnic/%s/%s", root, val("pod"), t), "vup");
	inflight("-hccs_ping", t);
	long long hns = atoll(val("hns")), sum = 0;
	printf("device %s PING %s\n\n", val("dev"), t);
	for (long i = 0; i < cnt; i++) {
		long long ns = hns + i * 3;
		sum += ns;
		if (ok)
			printf("This pkt ping success!\nrecv seq %ld, time = %lld.%03lldus, L1 plane check result = 0x0\n\n",
			       i, ns / 1000, ns % 1000);
		else
			printf("This pkt send fail!\nrecv seq %ld, time = 0.000us, L1 plane check result = 0x0\n\n", i);
	}
	if (ok) {
		long long mx = hns + (cnt - 1) * 3, avg = sum / cnt, tp = hns + (95 * cnt / 100) * 3;
		printf("%ld packets transmitted, %ld received, 0.00%% packets loss\n", cnt, cnt);
		printf("max time %lld.%03lldus\nmin time %lld.%03lldus\naverage time %lld.%03lldus\nTP95 time %lld.%03lldus\n",
		       mx / 1000, mx % 1000, hns / 1000, hns % 1000, avg / 1000, avg % 1000, tp / 1000, tp % 1000);
	} else {
		printf("%ld packets transmitted, 0 received, 100.00%% packets loss\n", cnt);
		printf("max time 0.000us\nmin time 0.000us\naverage time 0.000us\nTP95 time 0.000us\n");
	}
	printf("Cmd executed successfully!\n");
	done(0);
}

static void hccn_tool(int argc, char **argv)
{
	struct stat st;
	env();
	/* busy (any non-empty counter file): sh takes the node lock, answers and decrements */
	if (stat(fmt("%s/render/busy", node), &st) != 0 || st.st_size > 0)
		fallback();
	if (argc < 5 || strcmp(argv[1], "-i"))
		fallback();
	const char *d = argv[2];
	while (d[0] == '0' && d[1])
		d++; /* sh strips leading zeros: -i 007 is device 7 */
	if (!digits(d))
		fallback();
	load(fmt("%s/render/dev%s.fp", node, d));
	if (!strcmp(argv[3], "-ping"))
		ping(argc, argv);
	if (!strcmp(argv[3], "-hccs_ping"))
		hccs_ping(argc, argv);
	const struct rec *r = argv[3][0] == '-' ? find(argv[3]) : NULL; /* only gets have a '-' key */
	if (argc == 5 && !strcmp(argv[4], "-g") && r)
		emit(r);
	fallback(); /* -tls -s, malformed or unknown commands */
}

/* `npu-smi info` must show live HBM claims (DIR/nodes/<n>/runtime/hbm/<dev>/<pid>) and, inside a
 * container, only its devices: both are drawn by runtime/smi.py through the sh script. */
static int occupied(void)
{
	const char *c = getenv("DEPLOY_SIM_CONTAINER");
	if (c && *c)
		return 1;
	DIR *d = opendir(fmt("%s/runtime/hbm", node));
	struct dirent *e;
	int found = 0;
	char sub[4096];
	while (d && !found && (e = readdir(d))) {
		if (e->d_name[0] == '.' || snprintf(sub, sizeof sub, "%s/runtime/hbm/%s", node, e->d_name) >= (int)sizeof sub)
			continue;
		DIR *s = opendir(sub);
		struct dirent *f;
		while (s && !found && (f = readdir(s)))
			found = f->d_name[0] != '.';
		if (s)
			closedir(s);
	}
	if (d)
		closedir(d);
	return found;
}

/* npu-smi info [-l | -m | -t board|health|spod-info -i N [-c C]] */
static void npu_smi(int argc, char **argv)
{
	char key[128];
	const char *t = "", *i = "", *c = "", *k = NULL;
	env();
	if (argc < 2 || strcmp(argv[1], "info") || (argc == 3 && strcmp(argv[2], "-l") && strcmp(argv[2], "-m")))
		fallback();
	if (argc == 2 && occupied())
		fallback();
	if (argc <= 3) {
		snprintf(key, sizeof key, "%s", argc == 2 ? "info" : argv[2][1] == 'l' ? "list" : "map");
	} else {
		if (argc % 2)
			fallback();
		for (int a = 2; a < argc; a += 2) {
			if (!strcmp(argv[a], "-t"))
				t = argv[a + 1];
			else if (!strcmp(argv[a], "-i"))
				i = argv[a + 1];
			else if (!strcmp(argv[a], "-c"))
				c = argv[a + 1];
			else
				fallback();
		}
		k = !strcmp(t, "board") ? "board" : !strcmp(t, "health") ? "health" : !strcmp(t, "spod-info") ? "spod" : NULL;
		if (!k || !digits(i) || (*c && !digits(c)) || strlen(i) + strlen(c) > 40)
			fallback();
		if (*c)
			snprintf(key, sizeof key, "%s_%s_%s", k, i, c);
		else
			snprintf(key, sizeof key, "%s_%s", k, i);
	}
	load(fmt("%s/render/smi/all.fp", node));
	const struct rec *r = find(key);
	if (!r)
		fallback(); /* sh: invalid card or chip id */
	emit(r);
}

int main(int argc, char **argv)
{
	const char *base = argc > 0 ? strrchr(argv[0], '/') : NULL;
	base = base ? base + 1 : argc > 0 ? argv[0] : "";
	args = argv;
	if (!strcmp(base, "hccn_tool") || !strcmp(base, "npu-smi")) {
		tool = base;
		if (tool[0] == 'h')
			hccn_tool(argc, argv);
		npu_smi(argc, argv);
	}
	fprintf(stderr, "fastpath: install me as hccn_tool or npu-smi\n");
	return 127;
}
