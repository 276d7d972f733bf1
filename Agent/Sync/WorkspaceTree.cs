using System.IO.Enumeration;
using System.Runtime.InteropServices;
using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>What is on disk at a path, as lstat sees it (a symlink is a symlink, never its target).</summary>
internal readonly record struct DiskEntry(EntryKind Kind, long Size, long MtimeTicks, UnixFileMode Mode, string SymlinkTarget)
{
    /// <summary>Anything that is not a regular file, directory or symlink (fifo, socket, device).</summary>
    public const EntryKind Other = (EntryKind)(-1);

    public bool Executable => (Mode & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
}

/// <summary>
/// Filesystem primitives for sync, all with lstat semantics: walking never enters a symlinked directory, deleting
/// removes a symlink and never its target, renames go through libc so a cross-device move fails instead of being
/// turned into a non-atomic copy.
/// </summary>
internal static partial class WorkspaceTree
{
    public const UnixFileMode DirectoryMode = (UnixFileMode)0b111_101_101;
    public const UnixFileMode ExecutableMode = (UnixFileMode)0b111_101_101;
    public const UnixFileMode RegularMode = (UnixFileMode)0b110_100_100;

    private const int EEXIST = 17;
    private const int EXDEV = 18;

    private static readonly EnumerationOptions s_enumeration = new()
    {
        AttributesToSkip = 0,
        IgnoreInaccessible = false,
        RecurseSubdirectories = false,
        ReturnSpecialDirectories = false,
    };

    public static UnixFileMode FileMode(bool executable) => executable ? ExecutableMode : RegularMode;

    /// <summary>Every entry under <paramref name="root"/>, keyed by '/'-separated relative path; parents come first.</summary>
    public static Dictionary<string, DiskEntry> Walk(string root)
    {
        var result = new Dictionary<string, DiskEntry>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push("");
        while (pending.Count > 0)
        {
            var relative = pending.Pop();
            var directory = relative.Length == 0 ? root : Path.Combine(root, relative);
            var children = new FileSystemEnumerable<(string Name, DiskEntry Entry)>(directory, Describe, s_enumeration);
            foreach (var (name, entry) in children)
            {
                var path = relative.Length == 0 ? name : relative + "/" + name;
                var resolved = entry.Kind == EntryKind.Symlink ? entry with { SymlinkTarget = ReadLink(Path.Combine(root, path)) } : entry;
                result.Add(path, resolved);
                if (entry.Kind == EntryKind.Directory)
                {
                    pending.Push(path);
                }
            }
        }

        return result;
    }

    /// <summary>lstat: the entry at <paramref name="fullPath"/>, or null when nothing is there.</summary>
    public static DiskEntry? Lstat(string fullPath)
    {
        // One lstat (and a stat for a symlink) fills FileInfo's cache; everything below reads that cache, except a
        // symlink's target (readlink). Asking LinkTarget, Directory.Exists and Exists in turn was three more calls
        // per file, 30k for the index of a 10k-file first sync.
        var info = new FileInfo(fullPath);
        var attributes = info.Attributes;
        if ((int)attributes == -1)
        {
            return null;
        }

        if ((attributes & FileAttributes.ReparsePoint) != 0)
        {
            return new DiskEntry(EntryKind.Symlink, 0, 0, 0, info.LinkTarget ?? "");
        }

        if ((attributes & FileAttributes.Directory) != 0)
        {
            return new DiskEntry(EntryKind.Directory, 0, 0, 0, "");
        }

        if (!info.Exists)
        {
            // A special file (fifo, socket) FileInfo does not report as a file.
            return new DiskEntry(DiskEntry.Other, 0, 0, 0, "");
        }

        return new DiskEntry(EntryKind.File, info.Length, info.LastWriteTimeUtc.Ticks, info.UnixFileMode, "");
    }

    /// <summary>Removes the entry at <paramref name="fullPath"/> (a directory with its contents); returns how many entries went.</summary>
    public static int Delete(string fullPath)
    {
        var entry = Lstat(fullPath);
        if (entry is null)
        {
            return 0;
        }

        if (entry.Value.Kind != EntryKind.Directory)
        {
            // unlink(2): for a symlink this removes the link itself.
            File.Delete(fullPath);
            return 1;
        }

        var count = 1;
        foreach (var child in Directory.EnumerateFileSystemEntries(fullPath, "*", s_enumeration).ToList())
        {
            count += Delete(child);
        }

        Directory.Delete(fullPath, recursive: false);
        return count;
    }

    /// <summary>rename(2); false when source and target are on different filesystems (EXDEV).</summary>
    public static bool TryRename(string source, string target)
    {
        if (rename(source, target) == 0)
        {
            return true;
        }

        var errno = Marshal.GetLastPInvokeError();
        if (errno == EXDEV)
        {
            return false;
        }

        throw new IOException($"rename '{source}' -> '{target}' failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
    }

    /// <summary>A name for a temporary entry beside its target, short enough for any target name.</summary>
    public static string TempPathBeside(string fullPath) =>
        Path.Combine(Path.GetDirectoryName(fullPath)!, $".rbs-sync-{Convert.ToHexStringLower(Guid.NewGuid().ToByteArray().AsSpan(0, 8))}");

    private static (string, DiskEntry) Describe(ref FileSystemEntry entry)
    {
        var name = entry.FileName.ToString();
        if ((entry.Attributes & FileAttributes.ReparsePoint) != 0)
        {
            return (name, new DiskEntry(EntryKind.Symlink, 0, 0, 0, ""));
        }

        if (entry.IsDirectory)
        {
            return (name, new DiskEntry(EntryKind.Directory, 0, 0, 0, ""));
        }

        var info = entry.ToFileSystemInfo();
        return info.Exists
            ? (name, new DiskEntry(EntryKind.File, entry.Length, entry.LastWriteTimeUtc.UtcTicks, info.UnixFileMode, ""))
            : (name, new DiskEntry(DiskEntry.Other, 0, 0, 0, ""));
    }

    private static string ReadLink(string fullPath) => new FileInfo(fullPath).LinkTarget ?? "";

    /// <summary>chmod(2) (File.SetUnixFileMode is flagged as unsupported on Windows, which the agent never runs on).</summary>
    public static void SetMode(string fullPath, UnixFileMode mode)
    {
        if (chmod(fullPath, (uint)mode) != 0)
        {
            throw Failure("chmod", fullPath);
        }
    }

    /// <summary>mkdir(2) of one directory (its parent must exist); an existing directory is fine.</summary>
    public static void MakeDirectory(string fullPath, UnixFileMode mode)
    {
        if (mkdir(fullPath, (uint)mode) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno == EEXIST && Lstat(fullPath) is { Kind: EntryKind.Directory })
            {
                return;
            }

            throw Failure("mkdir", fullPath, errno);
        }
    }

    private static IOException Failure(string call, string path, int? errno = null)
    {
        var code = errno ?? Marshal.GetLastPInvokeError();
        return new IOException($"{call} '{path}' failed: {Marshal.GetPInvokeErrorMessage(code)} (errno {code}).");
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int rename(string oldPath, string newPath);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int chmod(string path, uint mode);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mkdir(string path, uint mode);
}
