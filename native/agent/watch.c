/*
 * corral guest agent: file watches (PROTOCOL.md, "File watches").
 *
 * Each watch is an inotify instance of its own (two watches of one directory must not share
 * watch descriptors: inotify gives one wd per inode and instance), read from the agent's
 * poll loop. Events go to the host as WATCH_EVENTS frames of records, paths relative to the
 * watched directory. Nothing here grows without bound: at most WATCH_MAX watches, at most
 * WATCH_DIRS_MAX watched directories each, and an instance is read only while the agent's
 * output queue has room (watch_readable's caller checks it), so a host that does not read
 * leaves the events in the kernel's queue, which overflows (IN_Q_OVERFLOW) into one
 * `overflow` record instead of growing.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define T_WATCH_EVENTS 26
#define T_WATCH_END 27
#define WATCH_PATH_MAX 4096
#define WATCH_DIRS_MAX 4096                /* watched directories per watch */
#define WATCH_ANNOUNCE_MAX 4096            /* create records for what a new directory already holds */
#define WATCH_FRAME_BUDGET (60u * 1024)    /* a frame is sent once its records pass this */
#define WATCH_READ_BUF (64u * 1024)
#define WATCH_RECURSIVE 1u
/* After a read that produced records, the instance is not read for this long: a burst of
 * writes to one file then comes as one `write` record, not one per write(2). The first event
 * after a quiet spell is read at once. */
#define WATCH_LINGER_NS (1u * 1000 * 1000)

#define DIR_MASK (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)

enum { K_CREATE = 1, K_WRITE = 2, K_REMOVE = 3, K_RENAME = 4, K_OVERFLOW = 5 };
enum { END_STOPPED = 1, END_REMOVED = 2, END_FAILED = 3 };

struct wdir {
	int wd;
	char *rel; /* relative to the root: "" for the root itself */
};

struct fswatch {
	bool used;
	uint32_t id;
	int fd;
	bool recursive;
	char *root;
	struct wdir *dirs; /* sorted by wd */
	size_t ndirs, cap;
	bool dirs_full;    /* an overflow record was sent for a directory past WATCH_DIRS_MAX */
	uint32_t announce_left; /* create records the directory scan in progress may still send */
	uint64_t quiet_until;
	/* A MOVED_FROM waiting for its MOVED_TO (same cookie) */
	bool pend;
	uint32_t pend_cookie;
	bool pend_dir;
	char *pend_path;
	/* The frame being built: u32 count, then the records */
	uint8_t *frame;
	size_t flen, fcap;
	uint32_t count;
	size_t last_off; /* offset of the last record, for write coalescing (0: none) */
};

static struct fswatch fswatches[WATCH_MAX];

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct fswatch *find(uint32_t id)
{
	for (int i = 0; i < WATCH_MAX; i++)
		if (fswatches[i].used && fswatches[i].id == id)
			return &fswatches[i];
	return NULL;
}

bool watch_session_live(uint32_t id) { return id != 0 && find(id) != NULL; }

/* ---- frames ---- */

static void send_end(uint32_t id, int err, uint32_t reason, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void send_end(uint32_t id, int err, uint32_t reason, const char *fmt, ...)
{
	uint8_t p[12 + 512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf((char *)p + 12, sizeof p - 12, fmt, ap);
	va_end(ap);
	size_t len = n < 0 ? 0 : (size_t)n >= sizeof p - 12 ? sizeof p - 13 : (size_t)n;
	put_u32(p, (uint32_t)err);
	put_u32(p + 4, reason);
	put_u32(p + 8, len);
	send_frame(T_WATCH_END, id, p, 12 + len);
}

static void flush(struct fswatch *w)
{
	if (w->count == 0)
		return;
	put_u32(w->frame, w->count);
	send_frame(T_WATCH_EVENTS, w->id, w->frame, w->flen);
	w->flen = 4;
	w->count = 0;
	w->last_off = 0;
}

/* Appends one record: u32 kind, u32 flags (bit 0: a directory), str path, str to. */
static void record(struct fswatch *w, uint32_t kind, bool dir, const char *path, const char *to)
{
	size_t pl = strlen(path), tl = to ? strlen(to) : 0;
	if (pl > WATCH_PATH_MAX || tl > WATCH_PATH_MAX)
		return; /* deeper than any path the host could be told of: dropped */
	/* A write right after a write of the same file in this frame says nothing new. */
	if (kind == K_WRITE && w->last_off) {
		const uint8_t *r = w->frame + w->last_off;
		if (get_u32(r) == K_WRITE && get_u32(r + 8) == pl && memcmp(r + 12, path, pl) == 0)
			return;
	}
	size_t need = 16 + pl + tl;
	if (w->flen + need > w->fcap) {
		size_t cap = w->fcap ? w->fcap : 4096;
		while (cap < w->flen + need)
			cap *= 2;
		uint8_t *f = realloc(w->frame, cap);
		if (!f) {
			logmsg("watch %u: out of memory, a record dropped", w->id);
			return;
		}
		w->frame = f;
		w->fcap = cap;
	}
	uint8_t *r = w->frame + w->flen;
	put_u32(r, kind);
	put_u32(r + 4, dir ? 1 : 0);
	put_u32(r + 8, pl);
	memcpy(r + 12, path, pl);
	put_u32(r + 12 + pl, tl);
	if (tl)
		memcpy(r + 16 + pl, to, tl);
	w->last_off = w->flen;
	w->flen += need;
	w->count++;
	if (w->flen >= WATCH_FRAME_BUDGET)
		flush(w);
}

/* ---- watched directories ---- */

static struct wdir *dir_find(struct fswatch *w, int wd)
{
	size_t lo = 0, hi = w->ndirs;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (w->dirs[mid].wd == wd)
			return &w->dirs[mid];
		if (w->dirs[mid].wd < wd)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static void dir_drop(struct fswatch *w, struct wdir *d)
{
	free(d->rel);
	size_t i = d - w->dirs;
	memmove(d, d + 1, (w->ndirs - i - 1) * sizeof *d);
	w->ndirs--;
}

/* Joins rel and name into out (WATCH_PATH_MAX + 1 bytes); false if too long. */
static bool join_rel(char *out, const char *rel, const char *name)
{
	int n = rel[0] ? snprintf(out, WATCH_PATH_MAX + 1, "%s/%s", rel, name) : snprintf(out, WATCH_PATH_MAX + 1, "%s", name);
	return n >= 0 && n <= WATCH_PATH_MAX;
}

static bool full_path(const struct fswatch *w, char *out, const char *rel)
{
	const char *sep = strcmp(w->root, "/") == 0 || !rel[0] ? "" : "/";
	int n = snprintf(out, WATCH_PATH_MAX + 1, "%s%s%s", w->root, sep, rel);
	return n >= 0 && n <= WATCH_PATH_MAX;
}

static void overflow_once(struct fswatch *w)
{
	if (w->dirs_full)
		return;
	w->dirs_full = true;
	record(w, K_OVERFLOW, false, "", NULL);
}

/* Adds a watch for the directory rel; returns its wd, or -1 with errno. */
static int dir_add(struct fswatch *w, const char *rel)
{
	static char path[WATCH_PATH_MAX + 1];
	if (!full_path(w, path, rel)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (w->ndirs >= WATCH_DIRS_MAX) {
		errno = ENOSPC;
		return -1;
	}
	int wd = inotify_add_watch(w->fd, path, DIR_MASK);
	if (wd < 0)
		return -1;
	struct wdir *d = dir_find(w, wd);
	if (d) { /* the same directory (a bind mount, or seen twice): keep the newest path */
		char *rel2 = strdup(rel);
		if (rel2) {
			free(d->rel);
			d->rel = rel2;
		}
		return wd;
	}
	if (w->ndirs == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 16;
		struct wdir *nd = realloc(w->dirs, cap * sizeof *nd);
		if (!nd) {
			inotify_rm_watch(w->fd, wd);
			errno = ENOMEM;
			return -1;
		}
		w->dirs = nd;
		w->cap = cap;
	}
	char *r = strdup(rel);
	if (!r) {
		inotify_rm_watch(w->fd, wd);
		errno = ENOMEM;
		return -1;
	}
	size_t i = w->ndirs;
	while (i > 0 && w->dirs[i - 1].wd > wd)
		i--;
	memmove(&w->dirs[i + 1], &w->dirs[i], (w->ndirs - i) * sizeof *w->dirs);
	w->dirs[i] = (struct wdir){ wd, r };
	w->ndirs++;
	return wd;
}

/* Watches rel's subdirectories, depth first. announce: a create record for each entry (a
 * directory that appeared: what was made in it before its watch existed is told this way;
 * an entry made meanwhile may be told twice), at most WATCH_ANNOUNCE_MAX per scan (then one
 * overflow record: a huge tree moved in must not fill the output queue). */
static void tree_add(struct fswatch *w, const char *rel, bool announce, int depth)
{
	if (depth == 0)
		w->announce_left = WATCH_ANNOUNCE_MAX;
	static char path[WATCH_PATH_MAX + 1];
	if (depth > 512 || !full_path(w, path, rel))
		return;
	int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return; /* gone meanwhile: its removal is an event of its own */
	}
	struct dirent *e;
	char *child = malloc(WATCH_PATH_MAX + 1);
	while (child && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (!join_rel(child, rel, e->d_name))
			continue;
		bool isdir = e->d_type == DT_DIR;
		if (e->d_type == DT_UNKNOWN) {
			struct stat st;
			isdir = fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
		}
		if (announce && w->announce_left > 0) {
			record(w, K_CREATE, isdir, child, NULL);
			if (--w->announce_left == 0)
				record(w, K_OVERFLOW, false, "", NULL);
		}
		if (!isdir)
			continue;
		if (dir_add(w, child) < 0) {
			if (errno == ENOSPC)
				overflow_once(w);
			continue;
		}
		tree_add(w, child, announce, depth + 1);
	}
	free(child);
	closedir(d);
}

/* Stops watching rel and everything under it (a directory moved away). */
static void tree_drop(struct fswatch *w, const char *rel)
{
	size_t rl = strlen(rel);
	for (size_t i = 0; i < w->ndirs;) {
		const char *r = w->dirs[i].rel;
		if (strncmp(r, rel, rl) == 0 && (r[rl] == '\0' || r[rl] == '/')) {
			inotify_rm_watch(w->fd, w->dirs[i].wd);
			dir_drop(w, &w->dirs[i]);
		} else {
			i++;
		}
	}
}

/* A directory renamed within the tree: its watches (of inodes, so still valid) are kept, and
 * their paths follow it. Dropping and adding them again would miss what is made in it before
 * the new watches exist. */
static void tree_rename(struct fswatch *w, const char *from, const char *to)
{
	static char path[WATCH_PATH_MAX + 1];
	size_t fl = strlen(from);
	for (size_t i = 0; i < w->ndirs;) {
		const char *r = w->dirs[i].rel;
		if (strncmp(r, from, fl) != 0 || (r[fl] != '\0' && r[fl] != '/')) {
			i++;
			continue;
		}
		int n = snprintf(path, sizeof path, "%s%s", to, r + fl);
		char *nr = n >= 0 && n <= WATCH_PATH_MAX ? strdup(path) : NULL;
		if (!nr) { /* too deep now (or no memory): no longer watched */
			inotify_rm_watch(w->fd, w->dirs[i].wd);
			dir_drop(w, &w->dirs[i]);
			continue;
		}
		free(w->dirs[i].rel);
		w->dirs[i].rel = nr;
		i++;
	}
}

/* ---- life ---- */

static void release(struct fswatch *w)
{
	if (w->fd >= 0)
		close(w->fd);
	for (size_t i = 0; i < w->ndirs; i++)
		free(w->dirs[i].rel);
	free(w->dirs);
	free(w->root);
	free(w->pend_path);
	free(w->frame);
	memset(w, 0, sizeof *w);
	w->fd = -1;
}

/* Sends what is held, then WATCH_END, and frees the watch. */
static void finish(struct fswatch *w, int err, uint32_t reason, const char *why)
{
	if (w->pend) {
		record(w, K_REMOVE, w->pend_dir, w->pend_path, NULL);
		w->pend = false;
	}
	flush(w);
	send_end(w->id, err, reason, "%s", why);
	release(w);
}

static void flush_pending(struct fswatch *w)
{
	if (!w->pend)
		return;
	w->pend = false;
	/* Moved out of the watched tree: gone, as far as the watch can tell. */
	record(w, K_REMOVE, w->pend_dir, w->pend_path, NULL);
	if (w->pend_dir && w->recursive)
		tree_drop(w, w->pend_path);
}

/* One inotify event. Returns false once the watch is over (freed). */
static bool on_event(struct fswatch *w, const struct inotify_event *ev)
{
	static char path[WATCH_PATH_MAX + 1];
	if (ev->mask & IN_Q_OVERFLOW) {
		flush_pending(w);
		record(w, K_OVERFLOW, false, "", NULL);
		return true;
	}
	struct wdir *d = dir_find(w, ev->wd);
	if (!d)
		return true; /* a directory dropped meanwhile */
	bool root = d->rel[0] == '\0';
	if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)) {
		if (root) {
			finish(w, 0, END_REMOVED, ev->mask & IN_UNMOUNT ? "its filesystem was unmounted" : ev->mask & IN_MOVE_SELF ? "it was moved" : "it was removed");
			return false;
		}
		/* A subdirectory: its parent tells of it (DELETE, MOVED_FROM). */
		if (ev->mask & IN_IGNORED)
			dir_drop(w, d);
		return true;
	}
	if (ev->len == 0 || !join_rel(path, d->rel, ev->name))
		return true;
	bool isdir = ev->mask & IN_ISDIR;
	if (w->pend && !((ev->mask & IN_MOVED_TO) && ev->cookie == w->pend_cookie))
		flush_pending(w);
	if (ev->mask & IN_CREATE) {
		record(w, K_CREATE, isdir, path, NULL);
	} else if (ev->mask & IN_MODIFY) {
		record(w, K_WRITE, isdir, path, NULL);
	} else if (ev->mask & IN_DELETE) {
		record(w, K_REMOVE, isdir, path, NULL);
	} else if (ev->mask & IN_MOVED_FROM) {
		char *p = strdup(path);
		if (!p) {
			record(w, K_REMOVE, isdir, path, NULL);
			if (isdir && w->recursive)
				tree_drop(w, path);
		} else {
			free(w->pend_path);
			w->pend_path = p;
			w->pend = true;
			w->pend_cookie = ev->cookie;
			w->pend_dir = isdir;
		}
		return true;
	} else if (ev->mask & IN_MOVED_TO) {
		if (w->pend) {
			w->pend = false;
			record(w, K_RENAME, isdir, w->pend_path, path);
			if (isdir && w->recursive) {
				tree_rename(w, w->pend_path, path);
				return true;
			}
		} else {
			record(w, K_CREATE, isdir, path, NULL);
		}
	}
	if (isdir && w->recursive && (ev->mask & (IN_CREATE | IN_MOVED_TO))) {
		if (dir_add(w, path) < 0) {
			if (errno == ENOSPC)
				overflow_once(w);
		} else {
			tree_add(w, path, true, 0);
		}
	}
	return true;
}

/* ---- the agent's hooks ---- */

int watch_poll_fd(int slot, int *timeout_ms)
{
	struct fswatch *w = &fswatches[slot];
	if (!w->used)
		return -1;
	if (w->quiet_until) {
		uint64_t now = now_ns();
		if (now < w->quiet_until) {
			int ms = (int)((w->quiet_until - now + 999999) / 1000000);
			if (*timeout_ms < 0 || *timeout_ms > ms)
				*timeout_ms = ms;
			return -1;
		}
		w->quiet_until = 0;
	}
	return w->fd;
}

void watch_readable(int slot, int fd)
{
	struct fswatch *w = &fswatches[slot];
	if (!w->used || w->fd != fd)
		return; /* ended earlier in this round */
	static uint8_t buf[WATCH_READ_BUF] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool any = false;
	for (int round = 0; round < 2; round++) {
		ssize_t n = read(w->fd, buf, sizeof buf);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			finish(w, e, END_FAILED, n < 0 ? strerror(e) : "inotify read returned nothing");
			return;
		}
		any = true;
		for (ssize_t off = 0; off + (ssize_t)sizeof(struct inotify_event) <= n;) {
			const struct inotify_event *ev = (const struct inotify_event *)(buf + off);
			off += sizeof *ev + ev->len;
			if (off > n)
				break;
			if (!on_event(w, ev))
				return;
		}
		/* A MOVED_FROM last in the buffer: its MOVED_TO may be next in the queue. */
		if (!w->pend)
			break;
	}
	flush_pending(w);
	flush(w);
	if (any)
		w->quiet_until = now_ns() + WATCH_LINGER_NS;
}

void watch_request(uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct reader r = { payload, len, 0, false };
	uint32_t flags = rd_u32(&r), n;
	const uint8_t *s = rd_bytes(&r, &n);
	if (r.bad || r.off != r.len || flags & ~WATCH_RECURSIVE || n == 0 || n > WATCH_PATH_MAX || s[0] != '/' || memchr(s, 0, n)) {
		send_end(id, EINVAL, END_FAILED, "malformed WATCH");
		return;
	}
	if (find(id)) {
		send_end(id, EBUSY, END_FAILED, "watch %u is live", id);
		return;
	}
	struct fswatch *w = NULL;
	for (int i = 0; i < WATCH_MAX && !w; i++)
		if (!fswatches[i].used)
			w = &fswatches[i];
	if (!w) {
		send_end(id, EMFILE, END_FAILED, "too many watches (max %d)", WATCH_MAX);
		return;
	}
	*w = (struct fswatch){ .used = true, .id = id, .fd = -1, .recursive = flags & WATCH_RECURSIVE, .flen = 4 };
	w->root = malloc((size_t)n + 1);
	w->frame = malloc(4096);
	w->fcap = 4096;
	if (!w->root || !w->frame) {
		release(w);
		send_end(id, ENOMEM, END_FAILED, "out of memory");
		return;
	}
	memcpy(w->root, s, n);
	w->root[n] = '\0';
	/* The real path: a symlinked directory is watched where it is, and the records' paths
	 * are relative to it (the host joins them to the path it asked for). */
	char *real = realpath(w->root, NULL);
	struct stat st;
	if (!real || stat(real, &st) < 0 || !S_ISDIR(st.st_mode)) {
		int e = real ? ENOTDIR : errno;
		free(real);
		release(w);
		send_end(id, e, END_FAILED, "%.*s: %s", (int)n, (const char *)s, e == ENOTDIR ? "not a directory" : strerror(e));
		return;
	}
	free(w->root);
	w->root = real;
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0 || dir_add(w, "") < 0) {
		int e = errno;
		release(w);
		send_end(id, e, END_FAILED, "watching %.*s: %s", (int)n, (const char *)s, strerror(e));
		return;
	}
	if (w->recursive)
		tree_add(w, "", false, 0);
	uint8_t none[4] = { 0 };
	send_frame(T_WATCH_EVENTS, id, none, sizeof none); /* no records: the watch is in place */
	flush(w); /* after it: an overflow record, if the tree had too many directories */
}

void watch_stop(uint32_t id)
{
	struct fswatch *w = find(id);
	if (!w)
		return; /* ended on its own while the stop was in flight, or never was */
	finish(w, 0, END_STOPPED, "stopped");
}

void watch_stop_all(void)
{
	for (int i = 0; i < WATCH_MAX; i++)
		if (fswatches[i].used)
			release(&fswatches[i]);
}
