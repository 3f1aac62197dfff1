/*
 * fstype: which filesystem a file lives on, to refuse the ones SQLite's
 * write-ahead log cannot work on (docs/design.md §12): WAL keeps its index in
 * shared memory that every process must map from one host, which a
 * network filesystem does not give.
 */
#ifndef SLUICE_FSTYPE_H
#define SLUICE_FSTYPE_H

#include <stdbool.h>
#include <stddef.h>

/* The type of the filesystem holding path ("ext4", "nfs4", "fuse.sshfs"),
 * as the kernel names it in mountinfo, copied into buf. path need not
 * exist: then its directory is asked. mountinfo is the file to read
 * (NULL: /proc/self/mountinfo). Returns 0, or a negative errno (-ENOENT
 * when no mount matches, or the mountinfo file is missing: not Linux). */
int fstype_of(const char *path, const char *mountinfo, char *buf, size_t n);

/* Whether a filesystem of this type may be shared between hosts: NFS, SMB
 * and CIFS, 9p, AFS, Ceph, GlusterFS, Lustre, cluster filesystems, and
 * FUSE filesystems that reach the network (sshfs, s3fs, rclone, …). */
bool fstype_is_network(const char *type);

#endif
