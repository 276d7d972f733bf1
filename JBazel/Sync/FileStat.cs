using System.Runtime.InteropServices;

namespace Rbs.JBazel.Sync;

internal enum FileKind
{
    Missing,
    File,
    Directory,
    Symlink,
    Other,
}

/// <summary>What the walk and the digest cache need to know about one path: lstat(2) (or stat(2)).</summary>
/// <param name="Kind">The file type.</param>
/// <param name="Mode">Permission bits (st_mode &amp; 07777).</param>
/// <param name="Size">Length in bytes.</param>
/// <param name="MtimeNanoseconds">Last modification, nanoseconds since the Unix epoch.</param>
/// <param name="Inode">Inode number (0 where the platform does not say).</param>
internal readonly record struct FileStat(FileKind Kind, int Mode, long Size, long MtimeNanoseconds, ulong Inode)
{
    public static readonly FileStat Missing = new(FileKind.Missing, 0, 0, 0, 0);

    public bool Executable => (Mode & 0b001_001_001) != 0;
}

/// <summary>
/// stat without the allocations of FileInfo: statx(2) on Linux (its struct layout is the same on every
/// architecture, unlike struct stat), FileSystemInfo elsewhere.
/// </summary>
internal static partial class FileStats
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxBasicStats = 0x7ff;

    private static bool s_statxMissing = !OperatingSystem.IsLinux();

    /// <summary>Stats <paramref name="path"/>; <paramref name="follow"/> = stat(2), otherwise lstat(2).</summary>
    public static FileStat Get(string path, bool follow)
    {
        if (!s_statxMissing)
        {
            try
            {
                if (Statx(AtFdCwd, path, follow ? 0 : AtSymlinkNoFollow, StatxBasicStats, out var buffer) != 0)
                {
                    return FileStat.Missing;
                }

                var kind = (buffer.Mode & 0xF000) switch
                {
                    0x8000 => FileKind.File,
                    0x4000 => FileKind.Directory,
                    0xA000 => FileKind.Symlink,
                    _ => FileKind.Other,
                };
                return new FileStat(kind, buffer.Mode & 0xFFF, (long)buffer.Size, buffer.MtimeSeconds * 1_000_000_000 + buffer.MtimeNanoseconds, buffer.Inode);
            }
            catch (EntryPointNotFoundException)
            {
                // glibc before 2.28 or another libc: the portable path below.
                s_statxMissing = true;
            }
        }

        return Portable(path, follow);
    }

    private static FileStat Portable(string path, bool follow)
    {
        try
        {
            var link = new FileInfo(path);
            if (link.LinkTarget is not null)
            {
                if (!follow)
                {
                    return new FileStat(FileKind.Symlink, 0, 0, 0, 0);
                }

                if (link.ResolveLinkTarget(returnFinalTarget: true) is not { } target)
                {
                    return FileStat.Missing;
                }

                path = target.FullName;
            }

            if (Directory.Exists(path))
            {
                return new FileStat(FileKind.Directory, 0, 0, 0, 0);
            }

            var file = new FileInfo(path);
            if (!file.Exists)
            {
                return FileStat.Missing;
            }

            var mode = OperatingSystem.IsWindows() ? 0 : (int)file.UnixFileMode;
            return new FileStat(FileKind.File, mode, file.Length, (file.LastWriteTimeUtc.Ticks - DateTime.UnixEpoch.Ticks) * 100, 0);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return FileStat.Missing;
        }
    }

    [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Statx(int directoryFd, string path, int flags, uint mask, out StatxBuffer buffer);

    /// <summary>struct statx (linux/stat.h), 256 bytes, fixed layout.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    private struct StatxBuffer
    {
        [FieldOffset(28)]
        public ushort Mode;

        [FieldOffset(32)]
        public ulong Inode;

        [FieldOffset(40)]
        public ulong Size;

        [FieldOffset(112)]
        public long MtimeSeconds;

        [FieldOffset(120)]
        public uint MtimeNanoseconds;
    }
}
