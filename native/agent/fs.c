/*
 * corral guest agent: FS frames (PROTOCOL.md, "File access").
 *
 * Every FS frame gets exactly one FS_REPLY on its session, in order. One-shot ops (STAT,
 * LIST, MKDIR, REMOVE, RENAME, SYMLINK, READLINK) finish their session with the reply; the
 * OPEN ops start a file handle that lives on the session until CLOSE, or until an op on it
 * fails. Files are read and written in chunks the host asks for, so neither side ever
 * holds a whole file. The agent is single-threaded: file I/O blocks it briefly, which is
 * fine for the guest's own disks; FIFOs and devices are refused at open (they could block
 * it for ever).
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define T_FS_REPLY 18
#define MAX_PAYLOAD (1024u * 1024u)
#define FS_PATH_MAX 4096
#define FS_MAX_HANDLES 64
#define FS_READ_MAX (512u * 1024u)   /* largest READ the host may ask for */
#define LIST_BUDGET (MAX_PAYLOAD - 8 * 1024)

enum fs_op {
	OP_STAT = 1,
	OP_LIST = 2,
	OP_MKDIR = 3,
	OP_REMOVE = 4,
	OP_RENAME = 5,
	OP_OPEN_READ = 6,
	OP_READ = 7,
	OP_OPEN_WRITE = 8,
	OP_WRITE = 9,
	OP_CLOSE = 10,
	OP_SYMLINK = 11,
	OP_READLINK = 12,
};

/* Entry kinds of a stat record. */
enum { K_FILE = 1, K_DIR = 2, K_SYMLINK = 3, K_OTHER = 4 };

#define OPEN_WRITE_APPEND 1u
#define OPEN_WRITE_MODE 2u   /* chmod the file to the given mode */
#define OPEN_WRITE_PARENTS 4u

struct handle {
	bool used;
	bool writing;
	uint32_t id;
	int fd;
};

static struct handle handles[FS_MAX_HANDLES];

static struct handle *handle_find(uint32_t id)
{
	for (int i = 0; i < FS_MAX_HANDLES; i++)
		if (handles[i].used && handles[i].id == id)
			return &handles[i];
	return NULL;
}

bool fs_session_live(uint32_t id) { return handle_find(id) != NULL; }

static void handle_free(struct handle *h)
{
	if (h->fd >= 0)
		close(h->fd);
	h->used = false;
	h->fd = -1;
}

/* ---- replies ---- */

static void reply_error(uint32_t id, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void reply_error(uint32_t id, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_errno_frame(T_FS_REPLY, id, err ? err : EIO, fmt, ap);
	va_end(ap);
}

static void reply_ok(uint32_t id)
{
	uint8_t p[4] = { 0 };
	send_frame(T_FS_REPLY, id, p, 4);
}

/* The 28-byte stat record: u32 kind, u32 mode (07777), u64 size, i64 mtime ms, u32 uid,
 * u32 gid... packed as kind, mode, size lo, size hi, mtime lo, mtime hi, uid, gid = 32. */
#define STAT_RECORD 32
static void put_stat(uint8_t *p, const struct stat *st)
{
	uint32_t kind = S_ISREG(st->st_mode) ? K_FILE : S_ISDIR(st->st_mode) ? K_DIR : S_ISLNK(st->st_mode) ? K_SYMLINK : K_OTHER;
	uint64_t size = (uint64_t)st->st_size;
	int64_t mtime = (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
	put_u32(p, kind);
	put_u32(p + 4, st->st_mode & 07777);
	put_u32(p + 8, (uint32_t)size);
	put_u32(p + 12, (uint32_t)(size >> 32));
	put_u32(p + 16, (uint32_t)(uint64_t)mtime);
	put_u32(p + 20, (uint32_t)((uint64_t)mtime >> 32));
	put_u32(p + 24, st->st_uid);
	put_u32(p + 28, st->st_gid);
}

static void reply_stat(uint32_t id, const struct stat *st)
{
	uint8_t p[4 + STAT_RECORD] = { 0 };
	put_stat(p + 4, st);
	send_frame(T_FS_REPLY, id, p, sizeof p);
}

/* ---- payload ---- */

/* Reads a path: absolute, no NUL, at most FS_PATH_MAX bytes. NULL if not. */
static bool rd_path(struct reader *r, char *out)
{
	uint32_t n;
	const uint8_t *s = rd_bytes(r, &n);
	if (r->bad || n == 0 || n > FS_PATH_MAX || s[0] != '/' || memchr(s, 0, n)) {
		r->bad = true;
		return false;
	}
	memcpy(out, s, n);
	out[n] = '\0';
	return true;
}

static bool rd_end(struct reader *r) { return !r->bad && r->off == r->len; }

/* ---- ops ---- */

static void op_list(uint32_t id, const char *path, uint32_t start)
{
	DIR *d = opendir(path);
	if (!d) {
		reply_error(id, errno, "%s: %s", path, strerror(errno));
		return;
	}
	uint8_t *p = malloc(MAX_PAYLOAD);
	if (!p) {
		closedir(d);
		reply_error(id, ENOMEM, "%s: out of memory", path);
		return;
	}
	size_t off = 12; /* errno, more, count */
	uint32_t count = 0, seen = 0, more = 0;
	struct dirent *e;
	errno = 0;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (seen++ < start)
			continue;
		size_t nl = strlen(e->d_name);
		if (off + 4 + nl + STAT_RECORD > LIST_BUDGET) {
			more = 1;
			break;
		}
		struct stat st;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* gone meanwhile */
		put_u32(p + off, nl);
		memcpy(p + off + 4, e->d_name, nl);
		put_stat(p + off + 4 + nl, &st);
		off += 4 + nl + STAT_RECORD;
		count++;
	}
	int err = errno;
	closedir(d);
	if (!e && err && !more) {
		free(p);
		reply_error(id, err, "%s: %s", path, strerror(err));
		return;
	}
	put_u32(p, 0);
	put_u32(p + 4, more);
	put_u32(p + 8, count);
	send_frame(T_FS_REPLY, id, p, off);
	free(p);
}

static void op_remove(uint32_t id, const char *path, bool recursive)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		reply_error(id, errno, "%s: %s", path, strerror(errno));
		return;
	}
	int rc;
	if (!S_ISDIR(st.st_mode))
		rc = unlink(path);
	else if (recursive)
		rc = remove_tree(path);
	else
		rc = rmdir(path);
	if (rc < 0)
		reply_error(id, errno, "%s: %s", path, strerror(errno));
	else
		reply_ok(id);
}

static void op_mkdir(uint32_t id, const char *path, uint32_t mode, bool recursive)
{
	int rc;
	if (recursive) {
		rc = make_dirs(path, mode);
	} else {
		rc = mkdir(path, mode);
		if (rc == 0)
			rc = chmod(path, mode); /* past the umask */
	}
	if (rc < 0)
		reply_error(id, errno, "%s: %s", path, strerror(errno));
	else
		reply_ok(id);
}

static struct handle *handle_alloc(uint32_t id)
{
	for (int i = 0; i < FS_MAX_HANDLES; i++) {
		if (!handles[i].used) {
			handles[i] = (struct handle){ .used = true, .id = id, .fd = -1 };
			return &handles[i];
		}
	}
	return NULL;
}

/* Opens non-blocking so a FIFO cannot hang the agent, then insists on a regular file. */
static void op_open(uint32_t id, const char *path, bool writing, uint32_t mode, uint32_t flags)
{
	struct handle *h = handle_alloc(id);
	if (!h) {
		reply_error(id, EMFILE, "%s: too many open files (max %d)", path, FS_MAX_HANDLES);
		return;
	}
	if (writing && (flags & OPEN_WRITE_PARENTS) && make_parents(path) < 0) {
		reply_error(id, errno, "%s: creating its parents: %s", path, strerror(errno));
		handle_free(h);
		return;
	}
	int of = O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
	of |= writing ? O_WRONLY | O_CREAT | ((flags & OPEN_WRITE_APPEND) ? O_APPEND : O_TRUNC) : O_RDONLY;
	int fd = open(path, of, 0644);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		reply_error(id, e, "%s: %s", path, strerror(e));
		handle_free(h);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		int e = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
		reply_error(id, e, "%s: %s", path, e == EISDIR ? strerror(e) : "not a regular file");
		handle_free(h);
		return;
	}
	if (writing && (flags & OPEN_WRITE_MODE) && fchmod(fd, mode) < 0) {
		int e = errno;
		close(fd);
		reply_error(id, e, "%s: chmod: %s", path, strerror(e));
		handle_free(h);
		return;
	}
	/* Back to blocking I/O: a regular file never blocks for long, and short writes are
	 * simpler to reason about without EAGAIN. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	h->fd = fd;
	h->writing = writing;
	reply_stat(id, &st);
}

static void op_read(uint32_t id, struct handle *h, uint32_t max)
{
	uint8_t *p = malloc(8 + (size_t)max);
	if (!p) {
		handle_free(h);
		reply_error(id, ENOMEM, "read: out of memory");
		return;
	}
	size_t got = 0;
	while (got < max) {
		ssize_t n = read(h->fd, p + 8 + got, max - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			free(p);
			handle_free(h);
			reply_error(id, e, "read: %s", strerror(e));
			return;
		}
		if (n == 0)
			break;
		got += n;
	}
	put_u32(p, 0);
	put_u32(p + 4, got);
	send_frame(T_FS_REPLY, id, p, 8 + got);
	free(p);
}

static void op_write(uint32_t id, struct handle *h, const uint8_t *data, uint32_t n)
{
	for (uint32_t off = 0; off < n;) {
		ssize_t w = write(h->fd, data + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			handle_free(h);
			reply_error(id, e, "write: %s", strerror(e));
			return;
		}
		off += w;
	}
	reply_ok(id);
}

static void op_close(uint32_t id, struct handle *h)
{
	int rc = close(h->fd);
	int e = errno;
	h->fd = -1;
	handle_free(h);
	if (rc < 0 && e != EINTR)
		reply_error(id, e, "close: %s", strerror(e));
	else
		reply_ok(id);
}

static void op_readlink(uint32_t id, const char *path)
{
	uint8_t p[8 + FS_PATH_MAX];
	ssize_t n = readlink(path, (char *)p + 8, FS_PATH_MAX);
	if (n < 0) {
		reply_error(id, errno, "%s: %s", path, strerror(errno));
		return;
	}
	put_u32(p, 0);
	put_u32(p + 4, n);
	send_frame(T_FS_REPLY, id, p, 8 + n);
}

static void op_symlink(uint32_t id, const uint8_t *target, uint32_t tn, const char *path)
{
	char t[FS_PATH_MAX + 1];
	memcpy(t, target, tn);
	t[tn] = '\0';
	if (symlink(t, path) < 0)
		reply_error(id, errno, "%s: %s", path, strerror(errno));
	else
		reply_ok(id);
}

/* A complaint about the host's FS frame: an FS_REPLY error on the session, so the host's
 * waiter is answered (the session is finished either way). */
static void malformed(uint32_t id, uint32_t op)
{
	struct handle *h = handle_find(id);
	if (h)
		handle_free(h);
	reply_error(id, EINVAL, "malformed FS op %u", op);
}

void fs_request(uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct reader r = { payload, len, 0, false };
	uint32_t op = rd_u32(&r);
	struct handle *h = handle_find(id);
	static char path[FS_PATH_MAX + 1], path2[FS_PATH_MAX + 1];
	if (r.bad || id == 0) {
		malformed(id, op);
		return;
	}
	if (op == OP_READ || op == OP_WRITE || op == OP_CLOSE) {
		/* A handle op on a session that is not open crossed the failure that ended it
		 * (or came after it in the host's pipeline): dropped, like STDIN after EXIT. */
		if (!h)
			return;
		if (op == OP_READ) {
			uint32_t max = rd_u32(&r);
			if (!rd_end(&r) || h->writing || max == 0 || max > FS_READ_MAX)
				malformed(id, op);
			else
				op_read(id, h, max);
		} else if (op == OP_WRITE) {
			uint32_t n;
			const uint8_t *d = rd_bytes(&r, &n);
			if (!rd_end(&r) || !h->writing)
				malformed(id, op);
			else
				op_write(id, h, d, n);
		} else {
			if (!rd_end(&r))
				malformed(id, op);
			else
				op_close(id, h);
		}
		return;
	}
	if (h) {
		malformed(id, op); /* a new op on a session whose file is open */
		return;
	}
	switch (op) {
	case OP_STAT:
	case OP_READLINK: {
		if (!rd_path(&r, path) || !rd_end(&r))
			break;
		struct stat st;
		if (op == OP_READLINK)
			op_readlink(id, path);
		else if (lstat(path, &st) < 0)
			reply_error(id, errno, "%s: %s", path, strerror(errno));
		else
			reply_stat(id, &st);
		return;
	}
	case OP_LIST: {
		if (!rd_path(&r, path))
			break;
		uint32_t start = rd_u32(&r);
		if (!rd_end(&r))
			break;
		op_list(id, path, start);
		return;
	}
	case OP_MKDIR: {
		if (!rd_path(&r, path))
			break;
		uint32_t mode = rd_u32(&r), rec = rd_u32(&r);
		if (!rd_end(&r) || mode > 07777 || rec > 1)
			break;
		op_mkdir(id, path, mode, rec);
		return;
	}
	case OP_REMOVE: {
		if (!rd_path(&r, path))
			break;
		uint32_t rec = rd_u32(&r);
		if (!rd_end(&r) || rec > 1)
			break;
		op_remove(id, path, rec);
		return;
	}
	case OP_RENAME: {
		if (!rd_path(&r, path) || !rd_path(&r, path2) || !rd_end(&r))
			break;
		if (rename(path, path2) < 0)
			reply_error(id, errno, "rename %s to %s: %s", path, path2, strerror(errno));
		else
			reply_ok(id);
		return;
	}
	case OP_SYMLINK: {
		uint32_t tn;
		const uint8_t *t = rd_bytes(&r, &tn);
		if (r.bad || tn == 0 || tn > FS_PATH_MAX || memchr(t, 0, tn) || !rd_path(&r, path) || !rd_end(&r))
			break;
		op_symlink(id, t, tn, path);
		return;
	}
	case OP_OPEN_READ:
		if (!rd_path(&r, path) || !rd_end(&r))
			break;
		op_open(id, path, false, 0, 0);
		return;
	case OP_OPEN_WRITE: {
		if (!rd_path(&r, path))
			break;
		uint32_t mode = rd_u32(&r), flags = rd_u32(&r);
		if (!rd_end(&r) || mode > 07777 || (flags & ~(OPEN_WRITE_APPEND | OPEN_WRITE_MODE | OPEN_WRITE_PARENTS)))
			break;
		op_open(id, path, true, mode, flags);
		return;
	}
	}
	malformed(id, op);
}
