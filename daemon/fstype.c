/*
 * fstype: the filesystem type of a path, from the kernel's mountinfo.
 *
 * The file's device number (stat, or its directory's when it does not
 * exist yet) is looked up in /proc/self/mountinfo, whose third field is
 * the device as "major:minor" and whose type follows the " - " separator.
 * Every mount of one device has one type, so bind mounts answer right.
 * Rejected: statfs's f_type magic numbers, which say "FUSE" for sshfs and
 * for a local fuse-overlayfs alike, where mountinfo names the subtype.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "sluice/fstype.h"
#include "sluice/xmalloc.h"

/* Types whose files other hosts can open too. Names as mountinfo prints
 * them; FUSE filesystems appear as "fuse.<subtype>". */
static const char *const network_types[] = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "coda",
    "ceph", "glusterfs", "lustre", "gfs2", "ocfs2", "gpfs", "beegfs",
    "orangefs", "pvfs2", "davfs", "fuse.sshfs", "fuse.s3fs", "fuse.rclone",
    "fuse.glusterfs", "fuse.ceph-fuse", "fuse.gcsfuse", "fuse.davfs2",
    "fuse.juicefs", "fuse.goofys", "fuse.cephfs", "fuse.moosefs",
};

bool
fstype_is_network(const char *type)
{
    for (size_t i = 0; i < sizeof(network_types) / sizeof(network_types[0]);
         i++) {
        if (strcmp(type, network_types[i]) == 0)
            return true;
    }
    return false;
}

/* The device of path, or of its directory when path does not exist. */
static int
device_of(const char *path, dev_t *dev)
{
    struct stat st;

    if (stat(path, &st) == 0) {
        *dev = st.st_dev;
        return 0;
    }
    if (errno != ENOENT)
        return -errno;
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    int rc = stat(slash ? dir : ".", &st) == 0 ? 0 : -errno;
    free(dir);
    if (rc == 0)
        *dev = st.st_dev;
    return rc;
}

int
fstype_of(const char *path, const char *mountinfo, char *buf, size_t n)
{
    char want[32], *line = NULL;
    size_t cap = 0;
    dev_t dev;
    int rc;

    if ((rc = device_of(path, &dev)) < 0)
        return rc;
    snprintf(want, sizeof(want), "%u:%u", major(dev), minor(dev));
    FILE *f = fopen(mountinfo ? mountinfo : "/proc/self/mountinfo", "r");
    if (f == NULL)
        return -errno;
    rc = -ENOENT;
    while (getline(&line, &cap, f) > 0) {
        /* "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root …" */
        char *p = line;
        for (int field = 0; field < 2 && p; field++) {
            p = strchr(p, ' ');
            if (p)
                p++;
        }
        if (p == NULL || strncmp(p, want, strlen(want)) != 0 ||
            p[strlen(want)] != ' ')
            continue;
        char *sep = strstr(p, " - ");
        if (sep == NULL)
            continue;
        sep += 3;
        size_t len = strcspn(sep, " \n");
        snprintf(buf, n, "%.*s", (int)len, sep);
        rc = 0;
        break;
    }
    free(line);
    fclose(f);
    return rc;
}
