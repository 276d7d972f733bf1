using Rbs.JBazel.Sync;
using Rbs.V1;

namespace Rbs.Tests.JBazel.Sync;

/// <summary>A temporary directory tree for sync tests (workspace at <see cref="Root"/>), deleted on dispose.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
internal sealed class SyncTree : IDisposable
{
    /// <summary>An mtime safely outside the digest cache's racy window.</summary>
    public static readonly DateTime OldTime = new(2020, 1, 2, 3, 4, 5, DateTimeKind.Utc);

    public SyncTree(string subdirectory = "ws")
    {
        Base = Directory.CreateTempSubdirectory("rbs-sync-test-").FullName;
        Root = Path.Combine(Base, subdirectory);
        Directory.CreateDirectory(Root);
    }

    public string Base { get; }

    public string Root { get; }

    public string CacheFile => Path.Combine(Base, "cache", "test.cache");

    public string FullPath(string relative) => Path.Combine(Root, relative);

    /// <summary>Writes a file (parents created) with an old mtime unless told otherwise.</summary>
    public string Write(string relative, string content, bool executable = false, bool old = true) =>
        Write(relative, System.Text.Encoding.UTF8.GetBytes(content), executable, old);

    public string Write(string relative, byte[] content, bool executable = false, bool old = true)
    {
        var path = FullPath(relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, content);
        File.SetUnixFileMode(path, executable
            ? UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute
            : UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        if (old)
        {
            File.SetLastWriteTimeUtc(path, OldTime);
        }

        return path;
    }

    public string Mkdir(string relative) => Directory.CreateDirectory(FullPath(relative)).FullName;

    public void Symlink(string relative, string target)
    {
        var path = FullPath(relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.CreateSymbolicLink(path, target);
    }

    /// <summary>The walk, as a sorted "path kind" listing (files "f", executables "x", dirs "d", symlinks "l -> target").</summary>
    public IReadOnlyList<string> Listing(WalkOptions? options = null) => Describe(Build(options).Entries);

    public Manifest Build(WalkOptions? options = null, string? cacheFile = null, TimeProvider? time = null) =>
        new ClientManifestBuilder(Root, options ?? WalkOptions.Default, cacheFile, time ?? TimeProvider.System).Build(CancellationToken.None);

    public static IReadOnlyList<string> Describe(IEnumerable<ManifestEntry> entries) => entries
        .Select(e => e.Kind switch
        {
            EntryKind.File => $"{e.Path} {(e.Executable ? "x" : "f")}",
            EntryKind.Directory => $"{e.Path} d",
            EntryKind.Symlink => $"{e.Path} l -> {e.SymlinkTarget}",
            _ => $"{e.Path} ?",
        })
        .ToList();

    public void Dispose()
    {
        try
        {
            Directory.Delete(Base, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
