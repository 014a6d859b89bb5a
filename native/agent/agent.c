/*
 * corral guest agent: serves the host↔guest protocol (PROTOCOL.md) over one port.
 *
 * Single-threaded poll() loop. Everything the agent writes to the port goes through one
 * output queue (outq) that is flushed with non-blocking writes, so frames are always whole,
 * never interleaved, and the agent never stalls on a slow host: while the queue is long,
 * it simply stops reading child output (back-pressure onto the children).
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/mount.h>
#include <sys/mman.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- protocol constants (PROTOCOL.md) ---- */

enum frame_type {
	T_HELLO = 1,
	T_EXEC = 2,
	T_STDIN = 3,
	T_STDOUT = 4,
	T_STDERR = 5,
	T_STARTED = 6,
	T_EXIT = 7,
	T_SIGNAL = 8,
	T_ERROR = 9,
	T_SHUTDOWN = 10,
	T_PING = 11,
	T_PONG = 12,
	T_CONFIGURE = 13,
	T_CONFIGURED = 14,
	T_SETUP = 15,
	T_SETUP_DONE = 16,
	T_FS = 17,
	T_FS_REPLY = 18,
	T_RESIZE = 19,
	T_STDIN_ACK = 20,
	T_OUTPUT_ACK = 21,
	T_PROBE = 22,
	T_PROBE_REPLY = 23,
	T_WATCH = 24,
	T_WATCH_STOP = 25,
	T_WATCH_EVENTS = 26,
	T_WATCH_END = 27,
};

#define HEADER_SIZE 12
#define MAX_PAYLOAD (1024u * 1024u)
#define MAX_SESSIONS 1024
#define MAX_PING 1024
#define OUTPUT_CHUNK (64 * 1024)           /* STDOUT/STDERR frame payload cap */
#define STDIN_LIMIT (4u * 1024 * 1024)     /* pending stdin per session */
#define EXEC_STDIN 1u
#define EXEC_MERGE_STDERR 2u
#define EXEC_TTY 4u                        /* protocol 3: u32 cols, u32 rows follow */
#define EXEC_USER 8u                       /* protocol 3: str user follows */
#define EXEC_CREDIT 16u                    /* protocol 4: acknowledge stdin with STDIN_ACK */
#define STDIN_ACK_MIN (64u * 1024)         /* acknowledge at least this much at once (or all, once drained) */
#define EXEC_OUT_CREDIT 32u                /* protocol 5: output waits for OUTPUT_ACK */
#define OUTPUT_WINDOW (2u * 1024 * 1024)   /* unacknowledged output of an OUT_CREDIT session */
#define PROBE_SPAWN 1u                     /* protocol 5: time spawns of a command */
#define PROBE_SINK 2u                      /* protocol 5: send N bytes of the agent's own */
#define PROBE_MAX_SPAWNS 1000u
/* After a short read of child output (the pipe held less than asked for: the child writes
 * in small pieces) the session's output pipes are not read for this long, so that the next
 * read takes what the child wrote meanwhile: each frame costs a port write and a virtio
 * kick in the guest and an event on the host, whatever its size. The first output after a
 * quiet spell is read and sent at once; a child that fills its pipe is never held. */
#define OUTPUT_LINGER_NS (1u * 1000 * 1000)
#define EXIT_OOM 1u                        /* EXIT flags: the guest's OOM killer struck */
#define CGROUP_ROOT "/sys/fs/cgroup"
#define MAX_GROUPS 64

/* Back-pressure thresholds on the output queue. */
#define OUTQ_PAUSE_CHILDREN (1024 * 1024)  /* stop reading child output above this */
#define OUTQ_PAUSE_PORT (8 * 1024 * 1024)  /* stop reading host frames above this */

#define PORT_READ_CHUNK (256 * 1024)
#define PORT_BACKOFF_MS 20

/* RNDADDENTROPY from <linux/random.h>, which musl-gcc cannot include. */
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG _IO('R', 0x07)

/* ---- logging and small utilities ---- */

static int log_fd = -1; /* /dev/kmsg once available; stderr otherwise */

void log_use_kmsg(void)
{
	if (log_fd < 0)
		log_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC | O_NOCTTY);
}

void logmsg(const char *fmt, ...)
{
	char line[512];
	int off = snprintf(line, sizeof line, "%scorral-agent: ", log_fd >= 0 ? "<3>" : "");
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line + off, sizeof line - off - 1, fmt, ap);
	va_end(ap);
	size_t len = off + (n < 0 ? 0 : (size_t)n);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	ssize_t w = write(log_fd >= 0 ? log_fd : STDERR_FILENO, line, len);
	(void)w; /* nowhere to report a failing log */
}

void ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int n = open("/dev/null", O_RDWR | O_NOCTTY);
		if (n >= 0 && n != fd) {
			dup2(n, fd);
			close(n);
		}
	}
}

uint64_t clock_ms(int clock_id)
{
	struct timespec ts;
	clock_gettime(clock_id, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}



/* ---- byte queue: data lives in p[off .. off+len) ---- */

struct buf {
	uint8_t *p;
	size_t off, len, cap;
};

/* Returns room for n more bytes at the tail (commit them with buf_commit), or NULL. */
static uint8_t *buf_reserve(struct buf *b, size_t n)
{
	if (b->off + b->len + n <= b->cap)
		return b->p + b->off + b->len;
	/* Compact when the consumed head is at least as big as the live data (so the copy
	 * costs no more than what was consumed); otherwise grow. */
	if (b->off > 0 && b->off >= b->len) {
		memmove(b->p, b->p + b->off, b->len);
		b->off = 0;
		if (b->len + n <= b->cap)
			return b->p + b->len;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->off + b->len + n)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p)
		return NULL;
	b->p = p;
	b->cap = cap;
	return b->p + b->off + b->len;
}

static void buf_commit(struct buf *b, size_t n) { b->len += n; }

static void buf_consume(struct buf *b, size_t n)
{
	b->off += n;
	b->len -= n;
	if (b->len == 0)
		b->off = 0;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

static const uint8_t *buf_data(const struct buf *b) { return b->p + b->off; }

/* ---- global state ---- */

struct exec_cgroup;

struct session {
	bool used;
	uint32_t id;
	uint32_t gen;      /* bumped on reuse, so stale poll entries are recognised */
	pid_t pid;         /* also the process group id (setsid) */
	bool reaped;
	int status;        /* wait status, valid once reaped */
	int in_fd;         /* our end of the child's stdin, -1 if closed/unused */
	int out_fd, err_fd;
	bool stdin_used;   /* exec flag bit 0 */
	bool stdin_eof;    /* host sent the zero-length STDIN: close once flushed */
	struct buf inq;    /* stdin not yet accepted by the pipe */
	bool credit;       /* exec flag CREDIT: the host waits for STDIN_ACK */
	uint64_t in_recv;  /* stdin bytes received from the host */
	uint64_t in_done;  /* of those, written to the child or dropped (may pass in_recv by a tty's ^D) */
	uint64_t in_acked; /* of those, acknowledged with STDIN_ACK */
	bool out_credit;   /* exec flag OUT_CREDIT: output waits for OUTPUT_ACK */
	uint64_t out_sent; /* STDOUT/STDERR payload bytes queued for the host */
	uint64_t out_acked;/* of those, acknowledged with OUTPUT_ACK */
	uint64_t out_quiet_until; /* CLOCK_MONOTONIC ns: the output pipes wait until then (OUTPUT_LINGER_NS) */
	bool tty;          /* out_fd is a pty master */
	struct exec_cgroup *cgroup; /* the group it runs in (NULL: none) */
	uint64_t oom_base; /* that cgroup's oom_kill count at start */
};

static struct session sessions[MAX_SESSIONS];
static unsigned live_sessions;

static bool port_mode;        /* --port: host-testing mode */
static int port_fd = -1;
static int sig_fd = -1;
static struct buf outq;       /* frames to the host */
static struct buf inq;        /* bytes from the host, not yet parsed */
static uint64_t skip_bytes;   /* payload of a rejected frame still to discard */
static uint64_t port_backoff_until; /* VM mode: host side disconnected, retry then */
static unsigned complaints;
static uint64_t start_ms;
static struct rlimit nofile_orig; /* restored in children */
static bool cgroups_ok;           /* per-exec cgroups (memory.events) available */

/* ---- frame output ---- */

static uint64_t clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


/* The last frame in outq while nothing was queued after it: child output of the same
 * session and stream is appended to it while it is still wholly unsent, so a child that
 * writes in small pieces while the host is behind costs a few large frames, not many
 * small ones (the host pays per frame). */
static struct {
	bool valid;
	uint16_t type;
	uint32_t id, len;
} tail;

static void put_header(uint8_t *p, uint32_t len, uint32_t session, uint16_t type)
{
	put_u32(p, len);
	put_u32(p + 4, session);
	p[8] = type;
	p[9] = type >> 8;
	p[10] = p[11] = 0;
}

void send_frame(uint16_t type, uint32_t session, const void *payload, size_t len)
{
	uint8_t *p = buf_reserve(&outq, HEADER_SIZE + len);
	if (!p) {
		logmsg("out of memory: dropped a frame of type %u", type);
		return;
	}
	put_header(p, len, session, type);
	if (len)
		memcpy(p + HEADER_SIZE, payload, len);
	buf_commit(&outq, HEADER_SIZE + len);
	tail.valid = false;
}

/* A frame whose payload is n i32s (STARTED: 1, EXIT: 2). */
static void send_i32s(uint16_t type, uint32_t session, int n, int32_t a, int32_t b)
{
	uint8_t p[8];
	put_u32(p, (uint32_t)a);
	put_u32(p + 4, (uint32_t)b);
	send_frame(type, session, p, 4 * n);
}

/* ERROR frame: i32 errno, str message. */
static void send_error(uint32_t session, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void send_errno_frame(uint16_t type, uint32_t session, int err, const char *fmt, va_list ap)
{
	uint8_t p[8 + 512];
	int n = vsnprintf((char *)p + 8, sizeof p - 8, fmt, ap);
	size_t len = n < 0 ? 0 : (size_t)n >= sizeof p - 8 ? sizeof p - 9 : (size_t)n;
	put_u32(p, (uint32_t)err);
	put_u32(p + 4, len);
	send_frame(type, session, p, 8 + len);
}

static void send_error(uint32_t session, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_errno_frame(T_ERROR, session, err, fmt, ap);
	va_end(ap);
}

/* A protocol complaint: ERROR on session 0. Logged, but only the first few. */
#define complain(err, ...)                                                     \
	do {                                                                   \
		send_error(0, (err), __VA_ARGS__);                             \
		if (++complaints <= 16)                                        \
			logmsg("protocol: " __VA_ARGS__);                      \
	} while (0)

static void send_hello(void)
{
	uint8_t p[64];
	size_t vl = strlen(AGENT_VERSION);
	put_u32(p, PROTOCOL_VERSION);
	put_u32(p + 4, vl);
	memcpy(p + 8, AGENT_VERSION, vl);
	put_u32(p + 8 + vl, (uint32_t)clock_ms(CLOCK_BOOTTIME));
	put_u32(p + 12 + vl, (uint32_t)(clock_ms(CLOCK_MONOTONIC) - start_ms));
	send_frame(T_HELLO, 0, p, 16 + vl);
}

/* Reads a str (no embedded NUL) and copies it NUL-terminated to *pool. */
static char *rd_str(struct reader *r, char **pool)
{
	uint32_t n;
	const uint8_t *s = rd_bytes(r, &n);
	if (r->bad || memchr(s, 0, n)) {
		r->bad = true;
		return NULL;
	}
	char *out = *pool;
	memcpy(out, s, n);
	out[n] = '\0';
	*pool += n + 1;
	return out;
}

/* Reads a strlist into a NULL-terminated, malloc'd pointer array. */
static char **rd_strlist(struct reader *r, char **pool, uint32_t *count)
{
	*count = rd_u32(r);
	/* Each str takes at least 4 bytes: bounds the allocation by the payload size. */
	if (r->bad || *count > (r->len - r->off) / 4) {
		r->bad = true;
		return NULL;
	}
	char **v = calloc((size_t)*count + 1, sizeof *v);
	if (!v) {
		r->bad = true;
		return NULL;
	}
	for (uint32_t i = 0; i < *count && !r->bad; i++)
		v[i] = rd_str(r, pool);
	return v;
}

static bool rd_done(struct reader *r) { return !r->bad && r->off == r->len; }

/* ---- sessions ---- */

static struct session *session_find(uint32_t id)
{
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (sessions[i].used && sessions[i].id == id)
			return &sessions[i];
	return NULL;
}

static struct session *session_alloc(uint32_t id)
{
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (!s->used) {
			uint32_t gen = s->gen + 1;
			memset(s, 0, sizeof *s);
			s->used = true;
			s->gen = gen;
			s->id = id;
			s->in_fd = s->out_fd = s->err_fd = -1;
			live_sessions++;
			return s;
		}
	}
	return NULL;
}

static void cgroup_release(struct exec_cgroup *cg);

static void session_free(struct session *s)
{
	if (s->cgroup)
		cgroup_release(s->cgroup);
	s->cgroup = NULL;
	close_fd(&s->in_fd);
	close_fd(&s->out_fd);
	close_fd(&s->err_fd);
	buf_free(&s->inq);
	s->used = false;
	live_sessions--;
}

/* ---- per-exec cgroups: how the agent learns that the OOM killer struck an exec ---- */

/* Mounts cgroup2 (VM mode only) and enables the memory controller for child groups. */
static void cgroups_init(void)
{
	/* favordynmods (Linux 6.0+): a process joining a group (each exec's child does) no longer
	 * waits for an RCU grace period on cgroup_threadgroup_rwsem, which in a one-vCPU TCG
	 * guest cost up to ~7 ms per exec; forks and exits pay a little instead. */
	if (mount("cgroup2", CGROUP_ROOT, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, "favordynmods") < 0 &&
	    errno != EBUSY &&
	    mount("cgroup2", CGROUP_ROOT, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 && errno != EBUSY) {
		logmsg("mount cgroup2: %s (OOM kills will not be reported)", strerror(errno));
		return;
	}
	int fd = open(CGROUP_ROOT "/cgroup.subtree_control", O_WRONLY | O_CLOEXEC);
	if (fd >= 0 && write(fd, "+memory", 7) == 7)
		cgroups_ok = true;
	else
		logmsg("enable memory cgroup: %s (OOM kills will not be reported)", strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* An exec's group, CGROUP_ROOT/exec-<id>, with the files the agent uses kept open: under
 * TCG each open of a cgroup file cost the guest about as much as the read. */
struct exec_cgroup {
	uint32_t id;
	int dir_fd;        /* the group itself: clone3 starts the child in it (CLONE_INTO_CGROUP) */
	int procs_fd;      /* cgroup.procs: where clone3 cannot, the child writes itself in */
	int mem_events_fd; /* memory.events: oom_kill */
	int events_fd;     /* cgroup.events: populated */
	uint64_t oom_kills; /* oom_kill when memory.events was last read */
};

/* The value of `key` in a flat-keyed cgroup file, read again from its start; 0 if unreadable. */
static uint64_t cgroup_key(int fd, const char *key)
{
	char text[512];
	ssize_t n = pread(fd, text, sizeof text - 1, 0);
	if (n <= 0)
		return 0;
	text[n] = '\0';
	const char *k = strstr(text, key);
	return k ? strtoull(k + strlen(key), NULL, 10) : 0;
}

/* The group's oom_kill count (hierarchical memory.events), remembered; 0 if unreadable. */
static uint64_t cgroup_oom_kills(struct exec_cgroup *cg)
{
	cg->oom_kills = cgroup_key(cg->mem_events_fd, "oom_kill ");
	return cg->oom_kills;
}

/* Empty groups kept for the next execs: making and removing a memory cgroup costs the guest
 * ~2 ms per exec under TCG, more than spawning `true`. A group still populated when its exec
 * ends (descendants live on) is left alone, never reused: its OOM counts are theirs. */
#define CGROUP_SPARES 8
static struct exec_cgroup *cgroup_spare[CGROUP_SPARES];
static int cgroup_spares;
static uint32_t cgroup_next = 1;

/* Closes the group's files and removes it (EBUSY while descendants live on in it: then it
 * is left, and its files stay in cgroupfs). */
static void cgroup_free(struct exec_cgroup *cg)
{
	char path[96];
	snprintf(path, sizeof path, CGROUP_ROOT "/exec-%u", cg->id);
	close_fd(&cg->dir_fd);
	close_fd(&cg->procs_fd);
	close_fd(&cg->mem_events_fd);
	close_fd(&cg->events_fd);
	rmdir(path);
	free(cg);
}

/* Gives an exec's group back: kept as a spare when empty and there is room, else freed. */
static void cgroup_release(struct exec_cgroup *cg)
{
	if (cgroup_spares < CGROUP_SPARES && cgroup_key(cg->events_fd, "populated ") == 0)
		cgroup_spare[cgroup_spares++] = cg;
	else
		cgroup_free(cg);
}

/* A spare group, or a new one with its files open; NULL if cgroups are unavailable or it
 * could not be made. */
static struct exec_cgroup *cgroup_take(void)
{
	if (!cgroups_ok)
		return NULL;
	if (cgroup_spares > 0)
		return cgroup_spare[--cgroup_spares];
	struct exec_cgroup *cg = calloc(1, sizeof *cg);
	if (!cg)
		return NULL;
	cg->id = cgroup_next++;
	cg->dir_fd = cg->procs_fd = cg->mem_events_fd = cg->events_fd = -1;
	char path[96];
	snprintf(path, sizeof path, CGROUP_ROOT "/exec-%u", cg->id);
	if ((mkdir(path, 0755) < 0 && errno != EEXIST) ||
	    (cg->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
	    (cg->procs_fd = openat(cg->dir_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC)) < 0 ||
	    (cg->mem_events_fd = openat(cg->dir_fd, "memory.events", O_RDONLY | O_CLOEXEC)) < 0 ||
	    (cg->events_fd = openat(cg->dir_fd, "cgroup.events", O_RDONLY | O_CLOEXEC)) < 0) {
		logmsg("exec cgroup %s: %s (this exec's OOM kills will not be reported)", path, strerror(errno));
		cgroup_free(cg);
		return NULL;
	}
	cgroup_oom_kills(cg); /* a group left by an earlier agent keeps its counts */
	return cg;
}

/* Sends EXIT and frees the session once the child is reaped and its output drained. */
static void session_maybe_exit(struct session *s)
{
	if (!s->reaped || s->out_fd >= 0 || s->err_fd >= 0)
		return;
	uint32_t flags = 0;
	if (s->cgroup && cgroup_oom_kills(s->cgroup) > s->oom_base)
		flags |= EXIT_OOM;
	uint8_t p[12];
	bool sig = WIFSIGNALED(s->status);
	put_u32(p, sig ? (uint32_t)-1 : (uint32_t)WEXITSTATUS(s->status));
	put_u32(p + 4, sig ? (uint32_t)WTERMSIG(s->status) : 0);
	put_u32(p + 8, flags);
	send_frame(T_EXIT, s->id, p, sizeof p);
	session_free(s);
}

/* Ends a session early with ERROR (no EXIT follows): kills its group, drops its pipes.
 * The child, if still unreaped, is reaped later as an anonymous child. */
static void session_abort(struct session *s, int err, const char *msg)
{
	if (s->pid > 0)
		kill(-s->pid, SIGKILL);
	send_error(s->id, err, "%s", msg);
	session_free(s);
}

static void close_stdin(struct session *s)
{
	close_fd(&s->in_fd);
	buf_free(&s->inq);
	s->in_done = s->in_recv; /* what the child will never read is dropped: done with it */
}

/* CREDIT sessions: gives the host back the window of the stdin that left inq, in steps of
 * STDIN_ACK_MIN (or all once inq is empty), so a slow child holds the host back instead of
 * growing inq. Never called once the session is finished (no frame may follow EXIT/ERROR). */
static void ack_stdin(struct session *s)
{
	if (!s->credit)
		return;
	uint64_t done = s->in_done < s->in_recv ? s->in_done : s->in_recv;
	uint64_t d = done - s->in_acked;
	if (d == 0 || (d < STDIN_ACK_MIN && s->inq.len > 0))
		return;
	uint8_t p[4];
	put_u32(p, (uint32_t)d); /* d ≤ STDIN_LIMIT: inq never holds more */
	send_frame(T_STDIN_ACK, s->id, p, sizeof p);
	s->in_acked += d;
}

/* Writes as much pending stdin as the pipe takes; closes it once drained after EOF. */
static void pump_stdin(struct session *s)
{
	while (s->in_fd >= 0 && s->inq.len > 0) {
		ssize_t n = write(s->in_fd, buf_data(&s->inq), s->inq.len);
		if (n > 0) {
			buf_consume(&s->inq, n);
			s->in_done += n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && errno == EAGAIN) {
			break;
		} else {
			/* EPIPE: the child closed its stdin; what it did not read is dropped. */
			close_stdin(s);
			break;
		}
	}
	if (s->in_fd >= 0 && s->stdin_eof && s->inq.len == 0)
		close_stdin(s);
	ack_stdin(s);
}

/* How many output bytes the session may queue now: an OUT_CREDIT session stops at
 * OUTPUT_WINDOW unacknowledged ones (its child then blocks on a full pipe). */
static size_t output_room(const struct session *s)
{
	if (!s->out_credit)
		return OUTPUT_CHUNK;
	uint64_t held = s->out_sent - s->out_acked;
	if (held >= OUTPUT_WINDOW)
		return 0;
	return OUTPUT_WINDOW - held < OUTPUT_CHUNK ? OUTPUT_WINDOW - held : OUTPUT_CHUNK;
}

/* Reads one chunk of child output straight into the output queue: appended to the tail
 * frame when that is the same session's and stream's and still unsent, else as a new
 * frame. drain: the session is being finished, take what is there whatever the window.
 * Returns whether it got data. On EOF it closes the pipe and may finish the session. */
static bool pump_output(struct session *s, int *fd, uint16_t type, bool drain)
{
	size_t room = drain ? OUTPUT_CHUNK : output_room(s);
	if (room == 0)
		return false;
	bool extend = tail.valid && tail.id == s->id && tail.type == type && tail.len < OUTPUT_CHUNK &&
		      outq.len >= HEADER_SIZE + tail.len;
	if (extend && room > OUTPUT_CHUNK - tail.len)
		room = OUTPUT_CHUNK - tail.len;
	uint8_t *p = buf_reserve(&outq, extend ? room : HEADER_SIZE + room);
	if (!p)
		return false; /* out of memory: leave it in the pipe for now */
	ssize_t n = read(*fd, extend ? p : p + HEADER_SIZE, room);
	if (n > 0) {
		if (extend) {
			/* p is the end of the queue; the tail frame's header sits before its payload. */
			put_u32(p - tail.len - HEADER_SIZE, tail.len + n);
			tail.len += n;
			buf_commit(&outq, n);
		} else {
			put_header(p, n, s->id, type);
			buf_commit(&outq, HEADER_SIZE + n);
			tail.valid = true;
			tail.type = type;
			tail.id = s->id;
			tail.len = n;
		}
		s->out_sent += n;
		if (!drain && (size_t)n < room)
			s->out_quiet_until = clock_ns() + OUTPUT_LINGER_NS;
		return true;
	}
	if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		close_fd(fd);
		session_maybe_exit(s);
	}
	return false;
}

/* Takes what is already in a pipe (at most 1 MiB, the largest pipe buffer) and closes it. */
static void drain_and_close(struct session *s, int *fd, uint16_t type)
{
	for (int i = 0; i < 16 && *fd >= 0 && pump_output(s, fd, type, true); i++) {
	}
	close_fd(fd);
}

/* ---- exec ---- */

struct exec_req {
	uint32_t flags;
	char **argv, **envp;
	const char *cwd;
	uint32_t uid, gid;
	uint32_t cols, rows;   /* EXEC_TTY */
	const char *user;      /* EXEC_USER: "name", "uid", "name:group", "uid:gid" */
	char *pool; /* storage of all strings */
	/* Resolved from user in the agent, before the fork: */
	bool creds;
	gid_t groups[MAX_GROUPS];
	int ngroups;
	char *home_env;        /* "HOME=…" added to envp when it had no HOME */
};

/* Why a child failed before exec. The child is vforked: it shares the agent's memory until
 * it execs or exits, and writes this there (stage -1: it exec'd). */
enum exec_stage { STAGE_NONE = -1, STAGE_STDIO, STAGE_CREDS, STAGE_CHDIR, STAGE_EXEC, STAGE_TTY };
struct exec_failure {
	int32_t stage, err;
};
static volatile struct exec_failure child_failure;

/* The signals the agent ignores (set once by setup_signals): the only dispositions that
 * survive an exec, so the only ones a child must put back. */
static sigset_t ignored_signals;

static void exec_req_free(struct exec_req *r)
{
	free(r->argv);
	free(r->envp);
	free(r->pool);
	free(r->home_env);
}

/* Parses an EXEC payload. Returns false if malformed. */
static bool parse_exec(const uint8_t *payload, uint32_t len, struct exec_req *r)
{
	struct reader rd = { payload, len, 0, false };
	uint32_t argc, envc;
	memset(r, 0, sizeof *r);
	/* All strings fit in len bytes: each needs n+1 but takes n+4 in the payload. */
	r->pool = malloc((size_t)len + 1);
	if (!r->pool)
		return false;
	char *pool = r->pool;
	r->flags = rd_u32(&rd);
	r->argv = rd_strlist(&rd, &pool, &argc);
	r->envp = rd_strlist(&rd, &pool, &envc);
	char *cwd = rd_str(&rd, &pool);
	r->uid = rd_u32(&rd);
	r->gid = rd_u32(&rd);
	if (r->flags & EXEC_TTY) {
		r->cols = rd_u32(&rd);
		r->rows = rd_u32(&rd);
		if (r->cols < 1 || r->cols > 65535 || r->rows < 1 || r->rows > 65535)
			return false;
	}
	if (r->flags & EXEC_USER) {
		r->user = rd_str(&rd, &pool);
		if (!r->user || !r->user[0] || strlen(r->user) > 256)
			return false;
	}
	if (!rd_done(&rd) || argc < 1 ||
	    (r->flags & ~(EXEC_STDIN | EXEC_MERGE_STDERR | EXEC_TTY | EXEC_USER | EXEC_CREDIT | EXEC_OUT_CREDIT)))
		return false;
	for (uint32_t i = 0; i < envc; i++) {
		const char *eq = strchr(r->envp[i], '=');
		if (!eq || eq == r->envp[i])
			return false;
	}
	r->cwd = cwd[0] ? cwd : "/";
	return true;
}

/* ---- users: "name", "uid", "name:group", "uid:gid", resolved from the guest's files ---- */

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* Splits one colon-separated line of /etc/passwd or /etc/group into at most max fields. */
static int split_fields(char *line, char **f, int max)
{
	int n = 0;
	line[strcspn(line, "\n")] = '\0';
	for (char *p = line; n < max; n++) {
		f[n] = p;
		p = strchr(p, ':');
		if (!p)
			return n + 1;
		*p++ = '\0';
	}
	return n;
}

/* Finds the passwd entry by name (or by uid when name is NULL). */
static bool passwd_find(const char *name, uid_t uid, char *namebuf, size_t namecap, uid_t *u, gid_t *g,
			char *home, size_t homecap)
{
	FILE *f = fopen("/etc/passwd", "re");
	if (!f)
		return false;
	char *line = NULL;
	size_t cap = 0;
	bool found = false;
	while (!found && getline(&line, &cap, f) > 0) {
		char *v[7];
		if (split_fields(line, v, 7) < 7 || !all_digits(v[2]) || !all_digits(v[3]))
			continue;
		uid_t lu = strtoul(v[2], NULL, 10);
		if (name ? strcmp(v[0], name) != 0 : lu != uid)
			continue;
		found = true;
		*u = lu;
		*g = strtoul(v[3], NULL, 10);
		snprintf(home, homecap, "%s", v[5][0] ? v[5] : "/");
		snprintf(namebuf, namecap, "%s", v[0]);
	}
	free(line);
	fclose(f);
	return found;
}

/* Looks a group up by name (sets *gid), and/or collects the groups that list user. */
static bool group_scan(const char *group, gid_t *gid, const char *user, gid_t *groups, int *n)
{
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return false;
	char *line = NULL;
	size_t cap = 0;
	bool found = false;
	while (getline(&line, &cap, f) > 0) {
		char *v[4];
		if (split_fields(line, v, 4) < 4 || !all_digits(v[2]))
			continue;
		gid_t g = strtoul(v[2], NULL, 10);
		if (group && !found && strcmp(v[0], group) == 0) {
			*gid = g;
			found = true;
		}
		if (!user || !user[0])
			continue;
		for (char *m = strtok(v[3], ","); m; m = strtok(NULL, ","))
			if (strcmp(m, user) == 0 && *n < MAX_GROUPS)
				groups[(*n)++] = g;
	}
	free(line);
	fclose(f);
	return found;
}

/* Resolves r->user into r->uid/gid/groups and HOME. Returns 0 or an errno, msg set. */
static int resolve_user(struct exec_req *r, char *msg, size_t cap)
{
	char spec[258], name[258] = "", home[512] = "/";
	snprintf(spec, sizeof spec, "%s", r->user);
	char *grp = strchr(spec, ':');
	if (grp)
		*grp++ = '\0';
	uid_t u = 0;
	gid_t g = 0;
	bool known;
	if (all_digits(spec)) {
		u = strtoul(spec, NULL, 10);
		/* A uid without a passwd entry is allowed (gid 0, HOME /), like docker. */
		known = passwd_find(NULL, u, name, sizeof name, &u, &g, home, sizeof home);
	} else {
		known = passwd_find(spec, 0, name, sizeof name, &u, &g, home, sizeof home);
		if (!known) {
			snprintf(msg, cap, "unknown user \"%s\": no such name in /etc/passwd", spec);
			return ENOENT;
		}
	}
	r->ngroups = 0;
	if (grp && !grp[0]) {
		snprintf(msg, cap, "user \"%s\": empty group after ':'", r->user);
		return EINVAL;
	}
	if (grp && all_digits(grp)) {
		g = strtoul(grp, NULL, 10);
		grp = NULL;
	}
	gid_t named = 0;
	bool gfound = group_scan(grp, &named, known ? name : NULL, r->groups + 1, &r->ngroups);
	if (grp && !gfound) {
		snprintf(msg, cap, "unknown group \"%s\": no such name in /etc/group", grp);
		return ENOENT;
	}
	if (grp)
		g = named;
	r->groups[0] = g;
	r->ngroups++;
	r->uid = u;
	r->gid = g;
	r->creds = true;
	/* HOME of the user unless the host's environment names one. */
	size_t envc = 0;
	bool has_home = false;
	for (; r->envp[envc]; envc++)
		if (strncmp(r->envp[envc], "HOME=", 5) == 0)
			has_home = true;
	if (!has_home) {
		char **e = realloc(r->envp, (envc + 2) * sizeof *e);
		if (!e || asprintf(&r->home_env, "HOME=%s", home) < 0) {
			if (e)
				r->envp = e;
			r->home_env = NULL;
			snprintf(msg, cap, "out of memory");
			return ENOMEM;
		}
		r->envp = e;
		e[envc] = r->home_env;
		e[envc + 1] = NULL;
	}
	return 0;
}

static const char *env_get(char *const envp[], const char *key)
{
	size_t kl = strlen(key);
	for (; *envp; envp++)
		if (strncmp(*envp, key, kl) == 0 && (*envp)[kl] == '=')
			return *envp + kl + 1;
	return NULL;
}

/* A file the kernel would not execute (no ELF, no #!) runs as a shell script, like execvp.
 * Runs in a vforked child: its argv is on the stack, not the heap it shares with the agent. */
static void exec_as_script(const char *path, char *const argv[], char *const envp[])
{
	size_t argc = 0;
	while (argv[argc])
		argc++;
	if (argc > 65536) {
		errno = E2BIG;
		return;
	}
	char *v[argc + 2];
	v[0] = (char *)"sh";
	v[1] = (char *)path;
	for (size_t i = 1; i <= argc; i++)
		v[i + 1] = argv[i];
	execve("/bin/sh", v, envp);
	errno = ENOEXEC;
}

/* execvpe() with the PATH taken from envp (libc execvpe reads the agent's own PATH, and
 * its default PATH differs from the protocol's). Returns the errno to report. */
static int exec_search(char *const argv[], char *const envp[])
{
	const char *file = argv[0];
	if (!file[0])
		return ENOENT;
	if (strchr(file, '/')) {
		execve(file, argv, envp);
		if (errno == ENOEXEC)
			exec_as_script(file, argv, envp);
		return errno;
	}
	const char *path = env_get(envp, "PATH");
	if (!path)
		path = DEFAULT_PATH;
	size_t fl = strlen(file);
	bool eacces = false;
	for (const char *p = path;; p++) {
		const char *end = strchrnul(p, ':');
		size_t dl = end - p;
		char full[PATH_MAX];
		if (dl + 1 + fl < sizeof full) {
			if (dl == 0) { /* empty entry = current directory */
				memcpy(full, file, fl + 1);
			} else {
				memcpy(full, p, dl);
				full[dl] = '/';
				memcpy(full + dl + 1, file, fl + 1);
			}
			execve(full, argv, envp);
			switch (errno) {
			case EACCES:
				eacces = true;
				/* fall through */
			case ENOENT:
			case ENOTDIR:
			case ESTALE:
			case ENODEV:
			case ETIMEDOUT:
			case ENAMETOOLONG:
			case ELOOP:
				break;
			case ENOEXEC:
				exec_as_script(full, argv, envp);
				return errno;
			default:
				return errno;
			}
		}
		if (!*end)
			break;
		p = end;
	}
	return eacces ? EACCES : ENOENT;
}

static void child_fail(enum exec_stage stage) __attribute__((noreturn));
static void child_fail(enum exec_stage stage)
{
	child_failure.err = errno;
	child_failure.stage = stage;
	_exit(127);
}

/* Runs in the vforked child: never returns, and touches the agent's memory only to report
 * a failure (child_failure). All agent fds are O_CLOEXEC, so only the three dup2'd ones
 * survive the exec. */
static void __attribute__((noreturn)) child_exec(const struct exec_req *r, int in_rd, int out_wr, int err_wr, const char *pts, int cg_fd)
{
	/* Undo the agent's signal setup: ignored dispositions and the mask survive exec (handled
	 * ones are reset by it). */
	for (int sig = 1; sig < 65; sig++)
		if (sigismember(&ignored_signals, sig) == 1)
			signal(sig, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (nofile_orig.rlim_cur)
		setrlimit(RLIMIT_NOFILE, &nofile_orig);

	setsid();
	if (cg_fd >= 0) {
		/* Join the exec's cgroup before anything runs, so all descendants are in it. */
		ssize_t w = write(cg_fd, "0", 1);
		(void)w; /* without it only the OOM report is lost */
	}
	if (pts) {
		/* The pty becomes the controlling terminal of the new session. */
		int t = open(pts, O_RDWR | O_CLOEXEC);
		if (t < 0 || ioctl(t, TIOCSCTTY, 0) < 0)
			child_fail(STAGE_TTY);
		if (r->creds && fchown(t, r->uid, -1) < 0)
			child_fail(STAGE_TTY);
		in_rd = out_wr = err_wr = t;
	}
	if (in_rd < 0)
		in_rd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (in_rd < 0 || dup2(in_rd, 0) < 0 || dup2(out_wr, 1) < 0 || dup2(err_wr, 2) < 0)
		child_fail(STAGE_STDIO);
	if (r->creds) {
		if (setgroups(r->ngroups, r->groups) < 0 || setgid(r->gid) < 0 || setuid(r->uid) < 0)
			child_fail(STAGE_CREDS);
	} else if (r->uid != 0 || r->gid != 0) {
		gid_t g = r->gid;
		if (setgroups(1, &g) < 0 || setgid(r->gid) < 0 || setuid(r->uid) < 0)
			child_fail(STAGE_CREDS);
	}
	/* After dropping privileges, so a cwd the user may not enter is an error. */
	if (chdir(r->cwd) < 0)
		child_fail(STAGE_CHDIR);
	errno = exec_search(r->argv, r->envp);
	child_fail(STAGE_EXEC);
}

/* What a spawned child runs: child_exec's arguments. */
struct child_spec {
	const struct exec_req *r;
	int in_rd, out_wr, err_wr;
	const char *pts;
	int cg_fd; /* cgroup.procs to write itself into, or -1 */
};

static int child_main(void *arg)
{
	const struct child_spec *c = arg;
	child_exec(c->r, c->in_rd, c->out_wr, c->err_wr, c->pts, c->cg_fd);
}

#if defined(__x86_64__)
#define CLONE_INTO_CGROUP_FLAG 0x200000000ULL
struct clone3_args {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};
/* clone3(args, size), then in the child fn(arg) and exit: a child that shares the agent's
 * memory (CLONE_VM) runs from the syscall's return on a stack of its own, which only a few
 * instructions can set up (libc's clone() is the same). Returns the pid or -errno. */
long agent_clone3(struct clone3_args *args, size_t size, int (*fn)(void *), void *arg);
__asm__(".text\n"
	".type agent_clone3,@function\n"
	"agent_clone3:\n"
	"	mov %rdx, %r8\n"  /* fn and arg: r8 and r9 survive the syscall, rdx and rcx may not */
	"	mov %rcx, %r9\n"
	"	mov $435, %eax\n" /* SYS_clone3 */
	"	syscall\n"
	"	test %rax, %rax\n"
	"	jnz 1f\n"
	"	xor %ebp, %ebp\n"
	"	mov %r9, %rdi\n"
	"	call *%r8\n"
	"	mov %eax, %edi\n"
	"	mov $60, %eax\n" /* SYS_exit */
	"	syscall\n"
	"	hlt\n"
	"1:	ret\n"
	".size agent_clone3, .-agent_clone3\n");

/* The child's stack (it runs until its exec while the agent waits: one at a time), with a
 * guard page below it. */
#define SPAWN_STACK (1u << 20)
static char *spawn_stack;
static bool clone3_unavailable; /* the kernel has no clone3 or no CLONE_INTO_CGROUP */

static pid_t clone_into_cgroup(struct child_spec *c, struct exec_cgroup *cg)
{
	if (!spawn_stack) {
		char *m = mmap(NULL, SPAWN_STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED)
			return -errno;
		mprotect(m, 4096, PROT_NONE);
		spawn_stack = m + 4096;
	}
	struct clone3_args a = {
		.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP_FLAG,
		.exit_signal = SIGCHLD,
		.stack = (uintptr_t)spawn_stack,
		.stack_size = SPAWN_STACK,
		.cgroup = (uint64_t)cg->dir_fd,
	};
	return (pid_t)agent_clone3(&a, sizeof a, child_main, c);
}
#endif

/* Starts a child that runs child_exec, in the group `cg` (if any), and returns once it has
 * exec'd or failed (child_failure says which); returns its pid or -errno.
 *
 * It shares the agent's memory until then: no copy of the agent's page tables and no
 * copy-on-write faults after (under TCG a fork cost more than spawning `true`). Where the
 * kernel can, clone3 starts it in its group (CLONE_INTO_CGROUP): moving a running process
 * there (a write to cgroup.procs) cost the guest ~0.4 ms per exec. Else a vfork, and the
 * child moves itself. In a function of its own, so that no local of the caller lives across
 * the vfork. */
static pid_t __attribute__((noinline)) spawn_child(struct child_spec *c, struct exec_cgroup *cg)
{
	child_failure.stage = STAGE_NONE;
	c->cg_fd = -1;
#if defined(__x86_64__)
	if (cg && !clone3_unavailable) {
		pid_t pid = clone_into_cgroup(c, cg);
		if (pid >= 0)
			return pid;
		if (pid == -ENOSYS || pid == -EINVAL || pid == -E2BIG) {
			clone3_unavailable = true;
			logmsg("clone3 into a cgroup: %s (execs join their cgroup themselves)", strerror(-pid));
		}
	}
#endif
	if (cg)
		c->cg_fd = cg->procs_fd;
	pid_t pid = vfork();
	if (pid == 0)
		child_exec(c->r, c->in_rd, c->out_wr, c->err_wr, c->pts, c->cg_fd);
	return pid < 0 ? -errno : pid;
}

static void report_failure(uint32_t id, const struct exec_req *r, const struct exec_failure *f)
{
	const char *e = strerror(f->err);
	switch (f->stage) {
	case STAGE_CHDIR:
		send_error(id, f->err, "chdir %s: %s", r->cwd, e);
		break;
	case STAGE_CREDS:
		send_error(id, f->err, "set uid %u gid %u: %s", r->uid, r->gid, e);
		break;
	case STAGE_TTY:
		send_error(id, f->err, "controlling terminal: %s", e);
		break;
	case STAGE_EXEC:
		send_error(id, f->err, "exec %s: %s", r->argv[0], e);
		break;
	default:
		send_error(id, f->err, "stdio setup: %s", e);
	}
}

/* Forks and execs; reports STARTED or ERROR. Waits (briefly, synchronously) on the
 * close-on-exec pipe so that STARTED always precedes any output of the session. */
/* Opens a pty master sized cols x rows; sets *pts to the slave's path. */
static int open_pty(const struct exec_req *r, char *pts, size_t cap)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0)
		return -1;
	struct winsize ws = { .ws_row = r->rows, .ws_col = r->cols };
	if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, pts, cap) != 0 ||
	    ioctl(m, TIOCSWINSZ, &ws) < 0) {
		int e = errno;
		close(m);
		errno = e;
		return -1;
	}
	return m;
}

static void start_exec(uint32_t id, struct exec_req *r)
{
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	int pty = -1;
	struct exec_cgroup *cg = NULL; /* the exec's cgroup until its session owns it */
	char pts[64];
	bool merge = r->flags & EXEC_MERGE_STDERR;
	bool tty = r->flags & EXEC_TTY;
	if (r->user) {
		char msg[400];
		int e = resolve_user(r, msg, sizeof msg);
		if (e) {
			send_error(id, e, "%s", msg);
			return;
		}
	}
	if (tty) {
		pty = open_pty(r, pts, sizeof pts);
		if (pty < 0) {
			send_error(id, errno, "pty: %s", strerror(errno));
			return;
		}
		/* stdin frames go to the master too; its own fd, so closing it ends nothing. */
		if ((r->flags & EXEC_STDIN) && (in[1] = fcntl(pty, F_DUPFD_CLOEXEC, 0)) < 0) {
			send_error(id, errno, "dup: %s", strerror(errno));
			goto close_all;
		}
		out[0] = pty;
		pty = -1;
	} else if (((r->flags & EXEC_STDIN) && pipe2(in, O_CLOEXEC) < 0) || pipe2(out, O_CLOEXEC) < 0 ||
		   (!merge && pipe2(err, O_CLOEXEC) < 0)) {
		send_error(id, errno, "pipe: %s", strerror(errno));
		goto close_all;
	}
	cg = cgroup_take();
	/* vfork: no copy of the agent's page tables and no copy-on-write faults after it (under
	 * TCG a fork cost more than spawning `true`), and the agent resumes once the child has
	 * exec'd or failed, so STARTED always precedes any output of the session. */
	pid_t pid = spawn_child(&(struct child_spec){ r, in[0], out[1], merge ? out[1] : err[1], tty ? pts : NULL, -1 }, cg);
	if (pid < 0) {
		send_error(id, -pid, "fork: %s", strerror(-pid));
		goto close_all;
	}

	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&err[1]);
	if (child_failure.stage != STAGE_NONE) {
		struct exec_failure f = { child_failure.stage, child_failure.err };
		waitpid(pid, NULL, 0);
		report_failure(id, r, &f);
		goto close_all;
	}

	struct session *s = session_alloc(id); /* a free slot was checked by the caller */
	s->pid = pid;
	s->stdin_used = r->flags & EXEC_STDIN;
	s->credit = (r->flags & EXEC_STDIN) && (r->flags & EXEC_CREDIT);
	s->out_credit = r->flags & EXEC_OUT_CREDIT;
	s->tty = tty;
	s->cgroup = cg;
	s->oom_base = cg ? cg->oom_kills : 0;
	cg = NULL;
	s->in_fd = in[1];
	s->out_fd = out[0];
	s->err_fd = err[0];
	for (int *fd = &s->in_fd; fd <= &s->err_fd; fd++)
		if (*fd >= 0)
			set_nonblock(*fd);
	send_i32s(T_STARTED, id, 1, pid, 0);
	return;

close_all:
	close_fd(&pty);
	if (cg)
		cgroup_release(cg);
	for (int i = 0; i < 2; i++) {
		close_fd(&in[i]);
		close_fd(&out[i]);
		close_fd(&err[i]);
	}
}

/* ---- handlers of host frames ---- */

static void on_exec(uint32_t id, const uint8_t *payload, uint32_t len)
{
	if (id == 0) {
		complain(EINVAL, "EXEC on session 0");
		return;
	}
	struct exec_req r;
	if (!parse_exec(payload, len, &r)) {
		complain(EINVAL, "malformed EXEC payload for session %u", id);
	} else if (session_find(id) || fs_session_live(id) || watch_session_live(id)) {
		send_error(id, EBUSY, "session %u is already live", id);
	} else if (live_sessions >= MAX_SESSIONS) {
		send_error(id, EBUSY, "too many sessions (max %d)", MAX_SESSIONS);
	} else {
		start_exec(id, &r);
	}
	exec_req_free(&r);
}

static void on_stdin(uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct session *s = session_find(id);
	if (!s)
		return; /* the session ended while this was in flight: not the host's fault */
	if (!s->stdin_used) {
		complain(EINVAL, "STDIN for session %u, which was started without stdin", id);
		return;
	}
	if (s->in_fd < 0 || s->stdin_eof) {
		/* The child closed its stdin (or EOF was already sent): drop, but give the window back. */
		s->in_recv += len;
		s->in_done = s->in_recv;
		ack_stdin(s);
		return;
	}
	if (len == 0) {
		if (s->tty) {
			/* A terminal has no EOF of its own: the line discipline's VEOF (^D) is it. */
			uint8_t *q = buf_reserve(&s->inq, 1);
			if (q) {
				*q = 4;
				buf_commit(&s->inq, 1);
			}
		}
		s->stdin_eof = true;
		pump_stdin(s);
		return;
	}
	if (s->inq.len + len > STDIN_LIMIT) {
		session_abort(s, ENOBUFS, "stdin buffer full (4 MiB): session killed");
		return;
	}
	uint8_t *p = buf_reserve(&s->inq, len);
	if (!p) {
		session_abort(s, ENOMEM, "out of memory buffering stdin: session killed");
		return;
	}
	memcpy(p, payload, len);
	buf_commit(&s->inq, len);
	s->in_recv += len;
	pump_stdin(s);
}

static void on_signal(uint32_t id, const uint8_t *payload, uint32_t len)
{
	int32_t sig = len == 4 ? (int32_t)get_u32(payload) : 0;
	if (sig < 1 || sig > 64 || id == 0) {
		complain(EINVAL, "malformed SIGNAL for session %u", id);
		return;
	}
	struct session *s = session_find(id);
	if (!s)
		return; /* already exited: a race, not an error */
	kill(-s->pid, sig);
	if (s->reaped) {
		/* The exec itself is gone and something else holds its output open (maybe
		 * outside its process group, out of the signal's reach): the host has stopped
		 * waiting for it, so finish the session now. */
		if (s->out_fd >= 0)
			drain_and_close(s, &s->out_fd, T_STDOUT);
		if (s->used && s->err_fd >= 0)
			drain_and_close(s, &s->err_fd, T_STDERR);
		if (s->used)
			session_maybe_exit(s);
	}
}

static void on_resize(uint32_t id, const uint8_t *payload, uint32_t len)
{
	uint32_t cols = len == 8 ? get_u32(payload) : 0, rows = len == 8 ? get_u32(payload + 4) : 0;
	if (id == 0 || cols < 1 || cols > 65535 || rows < 1 || rows > 65535) {
		complain(EINVAL, "malformed RESIZE for session %u", id);
		return;
	}
	struct session *s = session_find(id);
	if (!s || s->out_fd < 0)
		return; /* ended (or its terminal hung up) while this was in flight */
	if (!s->tty) {
		complain(EINVAL, "RESIZE for session %u, which has no terminal", id);
		return;
	}
	/* The kernel sends SIGWINCH to the terminal's foreground process group. */
	struct winsize ws = { .ws_row = rows, .ws_col = cols };
	if (ioctl(s->out_fd, TIOCSWINSZ, &ws) < 0)
		logmsg("TIOCSWINSZ: %s", strerror(errno));
}

static void on_output_ack(uint32_t id, const uint8_t *payload, uint32_t len)
{
	uint32_t n = len == 4 ? get_u32(payload) : 0;
	if (id == 0 || n == 0) {
		complain(EINVAL, "malformed OUTPUT_ACK for session %u", id);
		return;
	}
	struct session *s = session_find(id);
	if (!s)
		return; /* crossed the session's EXIT in flight */
	if (!s->out_credit || n > s->out_sent - s->out_acked) {
		complain(EINVAL, "OUTPUT_ACK of %u bytes for session %u, which has %llu unacknowledged", n, id,
			 (unsigned long long)(s->out_credit ? s->out_sent - s->out_acked : 0));
		return;
	}
	s->out_acked += n;
}

/* ---- probes: floors for the host's benchmarks (PROTOCOL.md, "Probes") ---- */

/* The SINK in progress (one at a time): bytes still to send as STDOUT on its session. */
static struct {
	bool active;
	uint32_t id;
	uint64_t left, t0;
} sink;
static const uint8_t sink_bytes[OUTPUT_CHUNK];

/* Queues SINK frames while the output queue has room; answers once all are queued. */
static void sink_top_up(void)
{
	while (sink.active && sink.left > 0 && outq.len < OUTQ_PAUSE_CHILDREN) {
		size_t n = sink.left < OUTPUT_CHUNK ? sink.left : OUTPUT_CHUNK;
		send_frame(T_STDOUT, sink.id, sink_bytes, n);
		sink.left -= n;
	}
	if (sink.active && sink.left == 0) {
		uint8_t p[12];
		put_u32(p, 0);
		put_u64(p + 4, clock_ns() - sink.t0);
		send_frame(T_PROBE_REPLY, sink.id, p, sizeof p);
		sink.active = false;
	}
}

static void probe_fail(uint32_t id, int err, const char *msg)
{
	uint8_t p[8 + 128];
	size_t ml = strlen(msg);
	put_u32(p, (uint32_t)err);
	put_u32(p + 4, ml);
	memcpy(p + 8, msg, ml);
	send_frame(T_PROBE_REPLY, id, p, 8 + ml);
}

/* SPAWN: runs argv count times, one after another, each from vfork to its reaping, stdio on
 * /dev/null; the agent serves nothing else meanwhile (a diagnostic, not an exec). */
static void probe_spawn(uint32_t id, struct reader *rd, uint32_t len)
{
	char *pool = malloc((size_t)len + 1), *at = pool;
	uint32_t count = rd_u32(rd), argc = 0, envc = 0;
	char **argv = pool ? rd_strlist(rd, &at, &argc) : NULL;
	char **envp = argv ? rd_strlist(rd, &at, &envc) : NULL;
	uint8_t *reply = NULL;
	if (!pool || !envp || !rd_done(rd) || argc < 1 || count < 1 || count > PROBE_MAX_SPAWNS) {
		probe_fail(id, EINVAL, "malformed SPAWN probe");
		goto out;
	}
	reply = malloc(12 + 8 * (size_t)count);
	if (!reply) {
		probe_fail(id, ENOMEM, "out of memory");
		goto out;
	}
	int status = 0;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t t0 = clock_ns();
		pid_t pid = vfork();
		if (pid == 0) {
			sigset_t none;
			sigemptyset(&none);
			sigprocmask(SIG_SETMASK, &none, NULL);
			signal(SIGPIPE, SIG_DFL);
			int nul = open("/dev/null", O_RDWR);
			if (nul >= 0) {
				dup2(nul, 0);
				dup2(nul, 1);
				dup2(nul, 2);
			}
			exec_search(argv, envp);
			_exit(127);
		}
		if (pid < 0) {
			probe_fail(id, errno, "vfork failed");
			goto out;
		}
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
		}
		put_u64(reply + 8 + 8 * (size_t)i, clock_ns() - t0);
	}
	put_u32(reply, 0);
	put_u32(reply + 4, count);
	put_u32(reply + 8 + 8 * (size_t)count, (uint32_t)status);
	send_frame(T_PROBE_REPLY, id, reply, 12 + 8 * (size_t)count);
out:
	free(reply);
	free(argv);
	free(envp);
	free(pool);
}

static void on_probe(uint32_t id, const uint8_t *payload, uint32_t len)
{
	if (id == 0) {
		complain(EINVAL, "PROBE on session 0");
		return;
	}
	if (session_find(id) || fs_session_live(id) || watch_session_live(id) || (sink.active && sink.id == id)) {
		probe_fail(id, EBUSY, "session is live");
		return;
	}
	struct reader rd = { payload, len, 0, false };
	uint32_t op = rd_u32(&rd);
	if (op == PROBE_SPAWN) {
		probe_spawn(id, &rd, len);
	} else if (op == PROBE_SINK) {
		uint32_t lo = rd_u32(&rd), hi = rd_u32(&rd);
		if (!rd_done(&rd))
			probe_fail(id, EINVAL, "malformed SINK probe");
		else if (sink.active)
			probe_fail(id, EBUSY, "a SINK probe is running");
		else {
			sink.active = true;
			sink.id = id;
			sink.left = (uint64_t)hi << 32 | lo;
			sink.t0 = clock_ns();
		}
	} else {
		probe_fail(id, EINVAL, "unknown probe");
	}
}

static void kill_all_sessions(void)
{
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (sessions[i].used && sessions[i].pid > 0)
			kill(-sessions[i].pid, SIGKILL);
}

static void on_shutdown(void)
{
	kill_all_sessions();
	if (port_mode)
		exit(0);
	system_shutdown();
}

static void apply_rng_seed(const uint8_t *seed, uint32_t n)
{
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		logmsg("open /dev/urandom: %s", strerror(errno));
		return;
	}
	/* RNDADDENTROPY mixes the bytes in and credits them, so the guest's CRNG is ready
	 * at once; a plain write (the fallback) mixes without crediting. */
	struct {
		int entropy_count, buf_size;
		uint8_t buf[];
	} *info = malloc(sizeof *info + n);
	if (info) {
		info->entropy_count = n > INT_MAX / 8 ? INT_MAX : (int)n * 8;
		info->buf_size = n;
		memcpy(info->buf, seed, n);
		if (ioctl(fd, RNDADDENTROPY, info) < 0) {
			logmsg("RNDADDENTROPY: %s", strerror(errno));
			ssize_t w = write(fd, seed, n);
			(void)w;
		}
		free(info);
	}
	/* Clones restored from one snapshot share the CRNG's state: crediting entropy alone
	 * does not reseed a CRNG that is already ready, so force it, or two clones would hand
	 * out the same "random" bytes until the next periodic reseed. */
	if (ioctl(fd, RNDRESEEDCRNG) < 0)
		logmsg("RNDRESEEDCRNG: %s", strerror(errno));
	close(fd);
}

static void on_configure(uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct reader rd = { payload, len, 0, false };
	uint32_t hn, sn;
	const uint8_t *host = rd_bytes(&rd, &hn);
	uint32_t sec = rd_u32(&rd), nsec = rd_u32(&rd);
	const uint8_t *seed = rd_bytes(&rd, &sn);
	if (id != 0 || !rd_done(&rd) || hn > 64 || (hn && memchr(host, 0, hn)) ||
	    nsec >= 1000000000u) {
		complain(EINVAL, "malformed CONFIGURE");
		return;
	}
	/* In host-testing mode the "guest" is the host itself: touch nothing. */
	if (!port_mode) {
		if (hn) {
			char name[65];
			memcpy(name, host, hn);
			name[hn] = '\0';
			set_hostname(name);
		}
		if (sec) {
			struct timespec ts = { sec, nsec };
			if (clock_settime(CLOCK_REALTIME, &ts) < 0)
				logmsg("clock_settime: %s", strerror(errno));
		}
		if (sn)
			apply_rng_seed(seed, sn);
	}
	send_frame(T_CONFIGURED, 0, NULL, 0);
}

/* SETUP: validated whole by setup.c, applied in order; always answered with SETUP_DONE
 * (i32 errno, u32 failed op index, str message). Host-testing mode only validates. */
static void on_setup(uint32_t id, const uint8_t *payload, uint32_t len)
{
	if (id != 0) {
		complain(EINVAL, "SETUP on session %u", id);
		return;
	}
	char msg[400];
	uint32_t failed = 0;
	int err = setup_apply(payload, len, port_mode, &failed, msg, sizeof msg);
	size_t ml = strlen(msg);
	uint8_t p[12 + sizeof msg];
	put_u32(p, (uint32_t)err);
	put_u32(p + 4, failed);
	put_u32(p + 8, ml);
	memcpy(p + 12, msg, ml);
	send_frame(T_SETUP_DONE, 0, p, 12 + ml);
}

static void dispatch(uint16_t type, uint32_t id, const uint8_t *payload, uint32_t len)
{
	switch (type) {
	case T_EXEC:
		on_exec(id, payload, len);
		break;
	case T_STDIN:
		if (id == 0)
			complain(EINVAL, "STDIN on session 0");
		else
			on_stdin(id, payload, len);
		break;
	case T_SIGNAL:
		on_signal(id, payload, len);
		break;
	case T_SHUTDOWN:
		if (id != 0 || len != 0)
			complain(EINVAL, "malformed SHUTDOWN");
		else
			on_shutdown();
		break;
	case T_PING:
		if (id != 0 || len > MAX_PING)
			complain(EINVAL, "malformed PING");
		else
			send_frame(T_PONG, 0, payload, len);
		break;
	case T_CONFIGURE:
		on_configure(id, payload, len);
		break;
	case T_SETUP:
		on_setup(id, payload, len);
		break;
	case T_FS:
		if (session_find(id) || watch_session_live(id))
			complain(EINVAL, "FS on exec or watch session %u", id);
		else
			fs_request(id, payload, len);
		break;
	case T_RESIZE:
		on_resize(id, payload, len);
		break;
	case T_OUTPUT_ACK:
		on_output_ack(id, payload, len);
		break;
	case T_PROBE:
		on_probe(id, payload, len);
		break;
	case T_WATCH:
		if (id == 0)
			complain(EINVAL, "WATCH on session 0");
		else if (session_find(id) || fs_session_live(id) || (sink.active && sink.id == id))
			complain(EINVAL, "WATCH on live session %u", id);
		else
			watch_request(id, payload, len);
		break;
	case T_WATCH_STOP:
		if (id == 0 || len != 0)
			complain(EINVAL, "malformed WATCH_STOP");
		else
			watch_stop(id);
		break;
	}
}

static bool host_frame_type(uint16_t type)
{
	return type == T_EXEC || type == T_STDIN || type == T_SIGNAL || type == T_SHUTDOWN ||
	       type == T_PING || type == T_CONFIGURE || type == T_SETUP || type == T_FS ||
	       type == T_RESIZE || type == T_OUTPUT_ACK || type == T_PROBE || type == T_WATCH || type == T_WATCH_STOP;
}

/* Handles every whole frame in inq. A rejected header's payload is skipped (skip_bytes),
 * so framing stays in sync whatever the payload size. */
static void parse_frames(void)
{
	for (;;) {
		if (skip_bytes > 0) {
			size_t k = skip_bytes < inq.len ? skip_bytes : inq.len;
			buf_consume(&inq, k);
			skip_bytes -= k;
			if (skip_bytes > 0)
				return;
		}
		if (inq.len < HEADER_SIZE)
			return;
		const uint8_t *h = buf_data(&inq);
		uint32_t len = get_u32(h), id = get_u32(h + 4);
		uint16_t type = h[8] | h[9] << 8, flags = h[10] | h[11] << 8;
		bool ok = false;
		if (len > MAX_PAYLOAD)
			complain(EMSGSIZE, "frame of %u bytes (max %u)", len, MAX_PAYLOAD);
		else if (flags != 0)
			complain(EINVAL, "frame with flags 0x%x", flags);
		else if (!host_frame_type(type))
			complain(EINVAL, "unexpected frame type %u", type);
		else
			ok = true;
		if (!ok) {
			buf_consume(&inq, HEADER_SIZE);
			skip_bytes = len;
			continue;
		}
		if (inq.len < HEADER_SIZE + (size_t)len)
			return;
		dispatch(type, id, h + HEADER_SIZE, len);
		buf_consume(&inq, HEADER_SIZE + len);
	}
}

/* ---- the port ---- */

/* The host went away. In the VM the port stays ours (the host may reconnect); poll
 * reports HUP without pause while nobody is connected, so back off for a while. */
static void port_hangup(const char *why)
{
	if (port_mode) {
		kill_all_sessions();
		exit(0);
	}
	if (port_backoff_until == 0)
		logmsg("port: %s; waiting for the host", why);
	port_backoff_until = clock_ms(CLOCK_MONOTONIC) + PORT_BACKOFF_MS;
}

static void port_read(void)
{
	uint8_t *p = buf_reserve(&inq, PORT_READ_CHUNK);
	if (!p)
		return;
	ssize_t n = read(port_fd, p, PORT_READ_CHUNK);
	if (n > 0) {
		port_backoff_until = 0;
		buf_commit(&inq, n);
		parse_frames();
	} else if (n == 0) {
		port_hangup("end of file");
	} else if (errno != EAGAIN && errno != EINTR) {
		port_hangup(strerror(errno));
	}
}

static void port_flush(void)
{
	while (outq.len > 0 && port_backoff_until == 0) {
		ssize_t n = write(port_fd, buf_data(&outq), outq.len);
		if (n > 0)
			buf_consume(&outq, n);
		else if (n < 0 && errno == EINTR)
			continue;
		else if (n < 0 && errno == EAGAIN)
			return;
		else
			port_hangup(n < 0 ? strerror(errno) : "short write");
	}
}

static int open_port_path(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0) {
		logmsg("%s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISCHR(st.st_mode))
		return open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path) {
		logmsg("%s: socket path too long", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		logmsg("connect %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	set_nonblock(fd);
	return fd;
}

/* ---- children ---- */

/* busybox halt/poweroff/reboot without -f signal PID 1 (its init's conventions): end the
 * guest the same way, cleanly. Only root can signal PID 1; the host lets a guest end itself. */
static void on_init_signal(uint32_t signo)
{
	bool halt = signo == SIGUSR1, off = signo == SIGUSR2;
	logmsg("signal %u: %s", signo, halt ? "halt" : off ? "power off" : "reboot");
	system_end(halt ? (int)RB_HALT_SYSTEM : off ? (int)RB_POWER_OFF : (int)RB_AUTOBOOT);
}

static void reap_children(void)
{
	struct signalfd_siginfo si;
	while (read(sig_fd, &si, sizeof si) == sizeof si) {
		if (!port_mode && (si.ssi_signo == SIGUSR1 || si.ssi_signo == SIGUSR2 || si.ssi_signo == SIGTERM))
			on_init_signal(si.ssi_signo);
	}
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_SESSIONS; i++) {
			struct session *s = &sessions[i];
			if (s->used && !s->reaped && s->pid == pid) {
				s->reaped = true;
				s->status = status;
				session_maybe_exit(s);
				break;
			}
		}
		/* No session: an orphan we inherited as PID 1 (or subreaper), or an aborted
		 * session's child. Reaping is all it needs. */
	}
}

/* Up to 3 pipes per session: the default soft limit (1024) would cap us near 340
 * sessions. Children get the original limit back before exec. */
static void raise_nofile_limit(void)
{
	const rlim_t want = 4 * MAX_SESSIONS + 64;
	if (getrlimit(RLIMIT_NOFILE, &nofile_orig) < 0 || nofile_orig.rlim_cur >= want)
		return;
	struct rlimit r = { want, nofile_orig.rlim_max > want ? nofile_orig.rlim_max : want };
	if (setrlimit(RLIMIT_NOFILE, &r) == 0)
		return;
	r.rlim_cur = r.rlim_max = nofile_orig.rlim_max; /* unprivileged: as far as allowed */
	if (setrlimit(RLIMIT_NOFILE, &r) < 0)
		logmsg("setrlimit RLIMIT_NOFILE: %s", strerror(errno));
}

static void setup_signals(void)
{
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	if (!port_mode) {
		signal(SIGINT, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		/* halt, poweroff, reboot (busybox init's signals), read from the signalfd */
		sigaddset(&set, SIGUSR1);
		sigaddset(&set, SIGUSR2);
		sigaddset(&set, SIGTERM);
	} else {
		/* Adopt orphaned grandchildren, like PID 1 would. */
		prctl(PR_SET_CHILD_SUBREAPER, 1);
	}
	sigprocmask(SIG_BLOCK, &set, NULL);
	/* And whatever the agent inherited ignored. */
	sigemptyset(&ignored_signals);
	for (int sig = 1; sig < 65; sig++) {
		struct sigaction old;
		if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_IGN)
			sigaddset(&ignored_signals, sig);
	}
	sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0)
		logmsg("signalfd: %s", strerror(errno));
}

/* ---- main loop ---- */

enum watch_kind { W_PORT, W_SIGNAL, W_STDIN, W_STDOUT, W_STDERR, W_FSWATCH };
struct watch {
	enum watch_kind kind;
	struct session *s;
	uint32_t gen;  /* W_FSWATCH: the watch slot */
};

static struct pollfd pfds[2 + 3 * MAX_SESSIONS + WATCH_MAX];
static struct watch watches[2 + 3 * MAX_SESSIONS + WATCH_MAX];

static void watch_fd(int *n, int fd, short events, enum watch_kind kind, struct session *s)
{
	pfds[*n] = (struct pollfd){ .fd = fd, .events = events };
	watches[*n] = (struct watch){ kind, s, s ? s->gen : 0 };
	(*n)++;
}

/* Builds the poll set; returns its size and sets *timeout. */
static int build_poll_set(int *timeout)
{
	int n = 0;
	*timeout = -1;
	if (port_backoff_until) {
		uint64_t now = clock_ms(CLOCK_MONOTONIC);
		if (now >= port_backoff_until)
			port_backoff_until = 0;
		else
			*timeout = (int)(port_backoff_until - now);
	}
	if (!port_backoff_until)
		watch_fd(&n, port_fd, (outq.len < OUTQ_PAUSE_PORT ? POLLIN : 0) |
				      (outq.len ? POLLOUT : 0), W_PORT, NULL);
	if (sig_fd >= 0)
		watch_fd(&n, sig_fd, POLLIN, W_SIGNAL, NULL);
	else
		*timeout = *timeout < 0 || *timeout > 100 ? 100 : *timeout; /* poll for children */
	bool read_children = outq.len < OUTQ_PAUSE_CHILDREN;
	uint64_t now_ns = 0;
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (!s->used)
			continue;
		if (s->in_fd >= 0 && s->inq.len > 0)
			watch_fd(&n, s->in_fd, POLLOUT, W_STDIN, s);
		bool room = read_children && output_room(s) > 0;
		if (room && s->out_quiet_until && (s->out_fd >= 0 || s->err_fd >= 0)) {
			if (!now_ns)
				now_ns = clock_ns();
			if (now_ns < s->out_quiet_until) {
				int ms = (int)((s->out_quiet_until - now_ns + 999999) / 1000000);
				if (*timeout < 0 || *timeout > ms)
					*timeout = ms;
				room = false;
			} else {
				s->out_quiet_until = 0;
			}
		}
		if (room && s->out_fd >= 0)
			watch_fd(&n, s->out_fd, POLLIN, W_STDOUT, s);
		if (room && s->err_fd >= 0)
			watch_fd(&n, s->err_fd, POLLIN, W_STDERR, s);
	}
	/* File watches are read under the same bound as child output: past it their events wait
	 * in the kernel's queue (which overflows into one record rather than growing). */
	for (int i = 0; read_children && i < WATCH_MAX; i++) {
		int fd = watch_poll_fd(i, timeout);
		if (fd >= 0) {
			watch_fd(&n, fd, POLLIN, W_FSWATCH, NULL);
			watches[n - 1].gen = (uint32_t)i;
		}
	}
	return n;
}

static void handle_child_fd(const struct pollfd *pfd, const struct watch *w)
{
	struct session *s = w->s;
	/* The session may have ended (and its slot been reused) earlier in this round. */
	if (!s->used || s->gen != w->gen)
		return;
	if (w->kind == W_STDIN && s->in_fd == pfd->fd) {
		if (pfd->revents & POLLOUT)
			pump_stdin(s);
		else {
			close_stdin(s); /* POLLERR: the reader is gone */
			ack_stdin(s);
		}
	} else if (w->kind == W_STDOUT && s->out_fd == pfd->fd) {
		pump_output(s, &s->out_fd, T_STDOUT, false);
	} else if (w->kind == W_STDERR && s->err_fd == pfd->fd) {
		pump_output(s, &s->err_fd, T_STDERR, false);
	}
}

static void serve(void)
{
	send_hello();
	for (;;) {
		/* A SINK refills the queue as the port drains it, until the port pushes back
		 * (then POLLOUT brings the loop back here). */
		do {
			sink_top_up();
			port_flush();
		} while (sink.active && outq.len == 0 && !port_backoff_until);
		int timeout, n = build_poll_set(&timeout);
		if (poll(pfds, n, timeout) < 0) {
			if (errno != EINTR)
				logmsg("poll: %s", strerror(errno));
			continue;
		}
		if (sig_fd < 0)
			reap_children();
		int port_revents = 0;
		for (int i = 0; i < n; i++) {
			if (!pfds[i].revents)
				continue;
			if (watches[i].kind == W_PORT)
				port_revents = pfds[i].revents;
			else if (watches[i].kind == W_SIGNAL)
				reap_children();
			else if (watches[i].kind == W_FSWATCH)
				watch_readable((int)watches[i].gen, pfds[i].fd);
			else
				handle_child_fd(&pfds[i], &watches[i]);
		}
		/* Host frames last: an EXEC may reuse fds and slots freed above. */
		if (port_revents & POLLOUT)
			port_flush();
		if (port_revents & POLLIN)
			port_read();
		else if (port_revents & (POLLHUP | POLLERR | POLLNVAL))
			port_hangup("hangup");
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: corral-agent [--port PATH] [--version]\n"
			"  As PID 1: assemble the root and serve the virtio port %s.\n"
			"  --port PATH: host-testing mode, serve a unix socket or char device.\n",
		AGENT_PORT_NAME);
}

int main(int argc, char **argv)
{
	start_ms = clock_ms(CLOCK_MONOTONIC);
	const char *port_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0) {
			printf("corral-agent %s (protocol %d)\n", AGENT_VERSION, PROTOCOL_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
			port_path = argv[++i];
		} else if (getpid() != 1) {
			/* As PID 1, stray words from the kernel command line land here: ignore. */
			usage();
			return 2;
		}
	}
	port_mode = port_path != NULL;
	if (!port_mode && getpid() != 1) {
		usage();
		return 2;
	}

	if (port_mode) {
		ensure_std_fds();
		raise_nofile_limit();
		setup_signals();
		port_fd = open_port_path(port_path);
		if (port_fd < 0)
			return 1;
	} else {
		if (boot_system() < 0)
			system_shutdown(); /* fail fast: the host sees qemu exit, not a HELLO timeout */
		setup_signals();
		raise_nofile_limit();
		cgroups_init();
		port_fd = open_virtio_port();
	}
	serve();
}
