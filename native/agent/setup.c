/*
 * SETUP frames (PROTOCOL.md, "Guest setup"): per-sandbox changes the host hands the agent
 * after boot or after a template restore, before any user code runs — patches written to
 * the writable layer, scripts, volume and tmpfs mounts, the NIC's address.
 *
 * Every field is validated before anything is applied; a bad payload changes nothing. An op
 * that fails stops the frame: the ops before it stay applied, the ones after are skipped,
 * and the host is told which one failed and why.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

enum setup_op {
	OP_MKDIR = 1,
	OP_WRITE = 2,
	OP_SYMLINK = 3,
	OP_REMOVE = 4,
	OP_MOUNT_9P = 5,
	OP_MOUNT_TMPFS = 6,
	OP_NET = 7,
	OP_UMOUNT = 8,
};

#define MAX_OPS 4096
#define SETUP_PATH_MAX 4096
#define WRITE_APPEND 1u
#define MOUNT_READONLY 1u

struct op {
	uint32_t kind;
	const char *path;   /* MKDIR WRITE SYMLINK REMOVE MOUNT_*: the guest path */
	const char *target; /* SYMLINK: link target; MOUNT_9P: tag; NET: interface */
	uint32_t mode;      /* MKDIR WRITE: permission bits */
	uint32_t flags;     /* WRITE: append; MOUNT_9P: readonly */
	uint32_t size_mib;  /* MOUNT_TMPFS */
	uint32_t addr, prefix, gateway; /* NET: IPv4 as a.b.c.d = a<<24|b<<16|c<<8|d */
	const uint8_t *data;
	uint32_t data_len;
};

/* A str field copied NUL-terminated into *pool (which has room: each str takes n+4 bytes
 * in the payload and n+1 in the pool). Rejects embedded NULs and strings over max bytes. */
static const char *rd_str(struct reader *r, char **pool, uint32_t max)
{
	uint32_t n;
	const uint8_t *s = rd_bytes(r, &n);
	if (r->bad || n > max || memchr(s, 0, n)) {
		r->bad = true;
		return NULL;
	}
	char *out = *pool;
	memcpy(out, s, n);
	out[n] = '\0';
	*pool += n + 1;
	return out;
}

/* ---- validation ---- */

/* Absolute, no empty, "." or ".." component, not "/" itself. */
static bool valid_path(const char *p)
{
	if (!p || p[0] != '/' || p[1] == '\0')
		return false;
	for (const char *c = p + 1;;) {
		const char *end = strchrnul(c, '/');
		size_t n = end - c;
		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		if (!*end)
			return true;
		c = end + 1;
	}
}

/* Under /proc, /sys or /dev (or one of them): the agent never writes or mounts there. */
static bool system_path(const char *p)
{
	static const char *const sys[] = { "/proc", "/sys", "/dev" };
	for (size_t i = 0; i < sizeof sys / sizeof sys[0]; i++) {
		size_t n = strlen(sys[i]);
		if (strncmp(p, sys[i], n) == 0 && (p[n] == '\0' || p[n] == '/'))
			return true;
	}
	return false;
}

static bool valid_name(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static bool parse_op(struct reader *r, char **pool, struct op *o)
{
	memset(o, 0, sizeof *o);
	o->kind = rd_u32(r);
	switch (o->kind) {
	case OP_MKDIR:
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		o->mode = rd_u32(r);
		return !r->bad && valid_path(o->path) && !system_path(o->path) && o->mode <= 07777;
	case OP_WRITE:
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		o->mode = rd_u32(r);
		o->flags = rd_u32(r);
		o->data = rd_bytes(r, &o->data_len);
		return !r->bad && valid_path(o->path) && !system_path(o->path) && o->mode <= 07777 &&
		       (o->flags & ~WRITE_APPEND) == 0;
	case OP_SYMLINK:
		o->target = rd_str(r, pool, SETUP_PATH_MAX);
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		return !r->bad && o->target[0] && valid_path(o->path) && !system_path(o->path);
	case OP_REMOVE:
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		return !r->bad && valid_path(o->path) && !system_path(o->path);
	case OP_MOUNT_9P:
		o->target = rd_str(r, pool, 31);
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		o->flags = rd_u32(r);
		return !r->bad && valid_name(o->target, 31) && valid_path(o->path) &&
		       !system_path(o->path) && (o->flags & ~MOUNT_READONLY) == 0;
	case OP_MOUNT_TMPFS:
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		o->size_mib = rd_u32(r);
		return !r->bad && valid_path(o->path) && !system_path(o->path) && o->size_mib >= 1 &&
		       o->size_mib <= 1024 * 1024;
	case OP_UMOUNT:
		o->path = rd_str(r, pool, SETUP_PATH_MAX);
		return !r->bad && valid_path(o->path) && !system_path(o->path);
	case OP_NET:
		o->target = rd_str(r, pool, IFNAMSIZ - 1);
		o->addr = rd_u32(r);
		o->prefix = rd_u32(r);
		o->gateway = rd_u32(r);
		return !r->bad && valid_name(o->target, IFNAMSIZ - 1) && o->prefix >= 1 &&
		       o->prefix <= 32 && o->addr != 0;
	default:
		r->bad = true;
		return false;
	}
}

/* ---- applying ---- */

/* mkdir -p of every parent of path (not path itself). */
int make_parents(const char *path)
{
	char buf[SETUP_PATH_MAX + 1];
	snprintf(buf, sizeof buf, "%s", path);
	for (char *s = strchr(buf + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -1;
		*s = '/';
	}
	return 0;
}

int make_dirs(const char *path, mode_t mode)
{
	if (make_parents(path) < 0)
		return -1;
	if (mkdir(path, mode) == 0)
		return chmod(path, mode); /* past the umask */
	struct stat st;
	if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return 0;
	if (errno == EEXIST)
		errno = ENOTDIR;
	return -1;
}

static int write_file(const struct op *o)
{
	if (make_parents(o->path) < 0)
		return -1;
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY |
		    ((o->flags & WRITE_APPEND) ? O_APPEND : O_TRUNC);
	int fd = open(o->path, flags, o->mode);
	if (fd < 0)
		return -1;
	for (uint32_t off = 0; off < o->data_len;) {
		ssize_t n = write(fd, o->data + off, o->data_len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			close(fd);
			errno = e;
			return -1;
		}
		off += n;
	}
	/* A new file's mode went through the umask; an appended one keeps its own. */
	if (!(o->flags & WRITE_APPEND) && fchmod(fd, o->mode) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (type == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -1 : 0;
}

int remove_tree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -1; /* already gone: what was asked */
	if (!S_ISDIR(st.st_mode))
		return unlink(path);
	return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

static int make_symlink(const struct op *o)
{
	if (make_parents(o->path) < 0)
		return -1;
	struct stat st;
	if (lstat(o->path, &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			errno = EISDIR;
			return -1;
		}
		if (unlink(o->path) < 0)
			return -1;
	}
	return symlink(o->target, o->path);
}

static int mount_9p(const struct op *o)
{
	if (make_dirs(o->path, 0755) < 0)
		return -1;
	/* cache=none: host-side changes show at once; msize as measured in DESIGN.md. */
	unsigned long fl = MS_NOSUID | MS_NODEV | ((o->flags & MOUNT_READONLY) ? MS_RDONLY : 0);
	return mount(o->target, o->path, "9p", fl, "trans=virtio,version=9p2000.L,msize=524288,cache=none");
}

static int mount_tmpfs(const struct op *o)
{
	char data[64];
	if (make_dirs(o->path, 0755) < 0)
		return -1;
	snprintf(data, sizeof data, "size=%um,mode=1777", o->size_mib);
	return mount("tmpfs", o->path, "tmpfs", MS_NOSUID | MS_NODEV, data);
}

/* Before a snapshot: qemu refuses to migrate while a 9p export is mounted. Not lazy: a
 * process holding files there must fail the snapshot (EBUSY), not lose its files. Not a
 * mount point (already unmounted) is fine. */
static int unmount_path(const struct op *o)
{
	if (umount2(o->path, UMOUNT_NOFOLLOW) < 0 && errno != EINVAL)
		return -1;
	return 0;
}

static void set_sin(struct sockaddr *sa, uint32_t addr)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(addr) };
	memcpy(sa, &sin, sizeof sin);
}

static int configure_net(const struct op *o)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, o->target);
	int rc = -1;
	set_sin(&ifr.ifr_addr, o->addr);
	if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
		goto out;
	set_sin(&ifr.ifr_netmask, o->prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> o->prefix));
	if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		goto out;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		goto out;
	if (o->gateway) {
		struct rtentry rt;
		memset(&rt, 0, sizeof rt);
		set_sin(&rt.rt_dst, 0);
		set_sin(&rt.rt_genmask, 0);
		set_sin(&rt.rt_gateway, o->gateway);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = (char *)o->target;
		if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
			goto out;
	}
	rc = 0;
out:;
	int e = errno;
	close(s);
	errno = e;
	return rc;
}

static const char *op_name(uint32_t kind)
{
	static const char *const names[] = { "?", "mkdir", "write", "symlink", "remove",
					     "mount 9p", "mount tmpfs", "net", "umount" };
	return kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

static int apply_op(const struct op *o)
{
	switch (o->kind) {
	case OP_MKDIR:
		return make_dirs(o->path, o->mode);
	case OP_WRITE:
		return write_file(o);
	case OP_SYMLINK:
		return make_symlink(o);
	case OP_REMOVE:
		return remove_tree(o->path);
	case OP_MOUNT_9P:
		return mount_9p(o);
	case OP_MOUNT_TMPFS:
		return mount_tmpfs(o);
	case OP_NET:
		return configure_net(o);
	case OP_UMOUNT:
		return unmount_path(o);
	}
	errno = EINVAL;
	return -1;
}

int setup_apply(const uint8_t *payload, uint32_t len, bool dry_run, uint32_t *failed, char *msg,
		size_t msgcap)
{
	struct reader r = { payload, len, 0, false };
	*failed = 0;
	msg[0] = '\0';
	uint32_t count = rd_u32(&r);
	/* Each op takes at least 8 bytes: bounds the allocation by the payload. */
	if (r.bad || count == 0 || count > MAX_OPS || count > (len - 4) / 8) {
		snprintf(msg, msgcap, "malformed SETUP: bad op count");
		return EINVAL;
	}
	struct op *ops = calloc(count, sizeof *ops);
	char *pool = malloc((size_t)len + 1);
	int err = 0;
	if (!ops || !pool) {
		snprintf(msg, msgcap, "out of memory");
		err = ENOMEM;
		goto done;
	}
	char *p = pool;
	for (uint32_t i = 0; i < count; i++) {
		if (!parse_op(&r, &p, &ops[i])) {
			*failed = i;
			snprintf(msg, msgcap, "malformed SETUP: op %u (%s) has a bad field", i, op_name(ops[i].kind));
			err = EINVAL;
			goto done;
		}
	}
	if (r.off != r.len) {
		snprintf(msg, msgcap, "malformed SETUP: %zu trailing bytes", r.len - r.off);
		err = EINVAL;
		goto done;
	}
	if (dry_run)
		goto done;
	for (uint32_t i = 0; i < count; i++) {
		if (apply_op(&ops[i]) < 0) {
			err = errno ? errno : EIO;
			*failed = i;
			snprintf(msg, msgcap, "%s %s: %s", op_name(ops[i].kind),
				 ops[i].path ? ops[i].path : ops[i].target, strerror(err));
			logmsg("setup: %s", msg);
			goto done;
		}
	}
done:
	free(ops);
	free(pool);
	return err;
}
