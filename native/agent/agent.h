/*
 * corral guest agent — shared declarations.
 *
 * The agent is PID 1 of a corral microVM: it assembles the root filesystem (boot.c) and then
 * serves the host↔guest protocol of PROTOCOL.md over one virtio-serial port (agent.c).
 * Only libc and the kernel ABI are used (no <linux/...> headers: musl-gcc has none).
 */
#ifndef CORRAL_AGENT_H
#define CORRAL_AGENT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENT_VERSION "0.1.0"
#define PROTOCOL_VERSION 6

/* Name of the virtio-serial port the host exposes for us. */
#define AGENT_PORT_NAME "corral.agent"

/* Default PATH for execs whose environment has none (PROTOCOL.md, "Agent rules"). */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- log.c-ish helpers (agent.c) ---- */

/* Logs one line prefixed "corral-agent: " to /dev/kmsg if open, else to stderr. */
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Starts logging to /dev/kmsg (call once /dev is mounted). */
void log_use_kmsg(void);
/* Makes sure fds 0, 1 and 2 are open, so pipes never land on them. */
void ensure_std_fds(void);
/* Milliseconds on the given clock. */
uint64_t clock_ms(int clock_id);

/* ---- boot.c: PID 1 system bring-up ---- */

/* Mounts proc/sysfs/devtmpfs, assembles the root from /proc/cmdline, sets the hostname,
 * brings up lo. Returns 0, or -1 if the root could not be assembled (already logged). */
int boot_system(void);
/* Waits (forever, PID 1 must not exit) for the virtio port named corral.agent, opens it
 * O_RDWR|O_NONBLOCK and creates /dev/virtio-ports/corral.agent. Returns the fd. */
int open_virtio_port(void);
/* sethostname() with logging; name is NUL-terminated. */
int set_hostname(const char *name);
/* Kills everything, syncs, unmounts what it can and resets the VM (qemu -no-reboot then
 * exits). Never returns. */
void system_shutdown(void) __attribute__((noreturn));
/* The same, ending with reboot(how): RB_POWER_OFF, RB_HALT_SYSTEM or RB_AUTOBOOT. */
void system_end(int how) __attribute__((noreturn));

/* ---- setup.c: SETUP frames (mounts, patches, scripts, NIC) ---- */

/* Validates a SETUP payload whole, then (unless dry_run) applies its ops in order, stopping
 * at the first that fails. Returns 0, or an errno with *failed = the op's index and msg
 * saying what failed. Never exits, whatever the payload. */
int setup_apply(const uint8_t *payload, uint32_t len, bool dry_run, uint32_t *failed, char *msg,
		size_t msgcap);

/* mkdir -p of every parent of path (not path itself); paths up to 4096 bytes. */
int make_parents(const char *path);
/* mkdir -p path, then chmod a new leaf to mode; an existing dir is fine. */
int make_dirs(const char *path, mode_t mode);
/* rm -rf path (no symlinks followed, one filesystem); nothing there is success. */
int remove_tree(const char *path);

/* ---- fs.c: FS frames (file access for the host) ---- */

/* Handles one FS frame on session id; always answers FS_REPLY (or drops a handle op
 * for a session that is not open). Never exits. */
void fs_request(uint32_t id, const uint8_t *payload, uint32_t len);
/* Whether id is an open file handle's session. */
bool fs_session_live(uint32_t id);

/* ---- watch.c: file watches (WATCH frames, protocol 6) ---- */

/* Most live watches (each is an inotify instance). */
#define WATCH_MAX 32

/* Starts watch id (WATCH frame); answers WATCH_EVENTS with no records once it is in place, or
 * WATCH_END with the errno. Never exits, whatever the payload. */
void watch_request(uint32_t id, const uint8_t *payload, uint32_t len);
/* Ends watch id with WATCH_END (WATCH_STOP frame); an id that is no live watch is ignored. */
void watch_stop(uint32_t id);
/* Whether id is a live watch's session. */
bool watch_session_live(uint32_t id);
/* The fd to poll for watch slot 0..WATCH_MAX-1, or -1 (none, or lingering: then *timeout_ms
 * is lowered to when it may be read again). */
int watch_poll_fd(int slot, int *timeout_ms);
/* Reads the slot's events and sends them (fd: what was polled, to detect a reused slot). */
void watch_readable(int slot, int fd);

/* ---- agent.c: output to the host ---- */

/* Queues one whole frame for the host. */
void send_frame(uint16_t type, uint32_t session, const void *payload, size_t len);
/* Sends an error-shaped frame (ERROR, FS_REPLY…): u32 errno, u32 length, the message
 * (printf-style, cut to 511 bytes). */
void send_errno_frame(uint16_t type, uint32_t session, int err, const char *fmt, va_list ap);

static inline void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static inline void put_u64(uint8_t *p, uint64_t v)
{
	put_u32(p, (uint32_t)v);
	put_u32(p + 4, (uint32_t)(v >> 32));
}

/* Shared by agent.c and setup.c: every read of a guest-bound payload is bounds-checked. */
static inline uint32_t get_u32(const uint8_t *p)
{
	return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- payload reader: every read is bounds-checked; errors are sticky ---- */

struct reader {
	const uint8_t *p;
	size_t len, off;
	bool bad;
};

static inline uint32_t rd_u32(struct reader *r)
{
	if (r->bad || r->len - r->off < 4) {
		r->bad = true;
		return 0;
	}
	uint32_t v = get_u32(r->p + r->off);
	r->off += 4;
	return v;
}

/* Reads a str/bytes field; returns a pointer into the payload and its length. */
static inline const uint8_t *rd_bytes(struct reader *r, uint32_t *n)
{
	*n = rd_u32(r);
	if (r->bad || r->len - r->off < *n) {
		r->bad = true;
		*n = 0;
		return NULL;
	}
	const uint8_t *s = r->p + r->off;
	r->off += *n;
	return s;
}


#endif
