using System.Diagnostics;
using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>What an apply changed (SyncDone's counters).</summary>
internal sealed class ApplyCounts
{
    public ulong FilesWritten { get; set; }

    public ulong EntriesDeleted { get; set; }

    public ulong DirectoriesCreated { get; set; }

    public ulong SymlinksWritten { get; set; }

    public long ApplyMillis { get; set; }
}

/// <summary>
/// Turns the workspace into the journal's tree. Every step looks at the disk first, so running the same journal again
/// after a crash at any point finishes the job: deletions of what the tree does not list, directories, file contents
/// (each placed by rename, never visible half-written), modes, symlinks; then the new index replaces the journal.
/// </summary>
internal sealed class SyncApplier(string workspace, SyncStateStore store)
{
    /// <summary>
    /// Test seam: called with a short description before every change to the workspace. Throwing from it simulates
    /// a crash at that point (the journal stays behind, as after a kill).
    /// </summary>
    internal Action<string>? BeforeChange { get; set; }

    public string Workspace { get; } = workspace;

    public ApplyCounts Apply(SavedTree journal)
    {
        var stopwatch = Stopwatch.StartNew();
        var counts = new ApplyCounts();
        var wanted = new Dictionary<string, TreeEntry>(journal.Entries.Count, StringComparer.Ordinal);
        foreach (var entry in journal.Entries)
        {
            wanted.Add(entry.Path, entry);
        }

        DeleteUnwanted(wanted, counts);
        var realDirectories = new HashSet<string>(StringComparer.Ordinal) { "" };
        CreateDirectories(journal.Entries, realDirectories, counts);
        PlaceFiles(journal.Entries, realDirectories, counts);
        PlaceSymlinks(journal.Entries, realDirectories, counts);

        // The index records each file's mtime as written, so the next sync can trust it without hashing.
        var index = new List<TreeEntry>(journal.Entries.Count);
        foreach (var entry in journal.Entries)
        {
            var record = new TreeEntry
            {
                Path = entry.Path,
                Kind = entry.Kind,
                Digest = entry.Digest,
                Size = entry.Size,
                Executable = entry.Executable,
                SymlinkTarget = entry.SymlinkTarget,
                Implied = entry.Implied,
            };
            if (entry.Kind == EntryKind.File && !entry.Write && entry.MtimeTicks != 0)
            {
                // Already in place when the sync was planned: its size and mtime were checked then.
                record.MtimeTicks = entry.MtimeTicks;
            }
            else if (entry.Kind == EntryKind.File)
            {
                var disk = WorkspaceTree.Lstat(Full(entry.Path));
                if (disk is not { Kind: EntryKind.File } file || file.Size != entry.Size)
                {
                    throw new IOException($"after applying the sync, '{entry.Path}' is not the expected {entry.Size}-byte file.");
                }

                record.MtimeTicks = file.MtimeTicks;
            }

            index.Add(record);
        }

        store.SaveIndex(new SavedTree(journal.Digest, index));
        store.DeleteJournal();
        store.ClearIncomplete();
        store.ClearStaging();
        counts.ApplyMillis = stopwatch.ElapsedMilliseconds;
        return counts;
    }

    private void DeleteUnwanted(Dictionary<string, TreeEntry> wanted, ApplyCounts counts)
    {
        var deletedDirectories = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (path, disk) in WorkspaceTree.Walk(Workspace).OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (IsUnderAny(path, deletedDirectories))
            {
                continue;
            }

            wanted.TryGetValue(path, out var want);
            if (want is null && disk.Kind == EntryKind.Symlink && SyncPaths.IsBazelConvenienceName(path))
            {
                // bazel's own convenience symlinks (bazel-bin, bazel-out, ...) belong to bazel, not to the client's tree.
                continue;
            }

            var keep = want is not null && want.Kind == disk.Kind &&
                (disk.Kind != EntryKind.Symlink || want.SymlinkTarget == disk.SymlinkTarget);
            if (keep)
            {
                continue;
            }

            Change($"delete {path}");
            counts.EntriesDeleted += (ulong)WorkspaceTree.Delete(Full(path));
            if (disk.Kind == EntryKind.Directory)
            {
                deletedDirectories.Add(path);
            }
        }
    }

    private void CreateDirectories(IReadOnlyList<TreeEntry> entries, HashSet<string> realDirectories, ApplyCounts counts)
    {
        // Entries are sorted, so a parent is handled before its children.
        foreach (var entry in entries.Where(e => e.Kind == EntryKind.Directory))
        {
            EnsureRealParent(entry.Path, realDirectories);
            var full = Full(entry.Path);
            var disk = WorkspaceTree.Lstat(full);
            if (disk is { Kind: EntryKind.Directory })
            {
                realDirectories.Add(entry.Path);
                continue;
            }

            if (disk is not null)
            {
                Change($"delete {entry.Path}");
                counts.EntriesDeleted += (ulong)WorkspaceTree.Delete(full);
            }

            Change($"mkdir {entry.Path}");
            WorkspaceTree.MakeDirectory(full, WorkspaceTree.DirectoryMode);
            realDirectories.Add(entry.Path);
            counts.DirectoriesCreated++;
        }
    }

    private void PlaceFiles(IReadOnlyList<TreeEntry> entries, HashSet<string> realDirectories, ApplyCounts counts)
    {
        foreach (var group in entries.Where(e => e.Kind == EntryKind.File && e.Write).GroupBy(e => e.Digest, StringComparer.Ordinal))
        {
            var targets = group.ToList();
            if (group.Key == ManifestReceiver.EmptyDigest)
            {
                foreach (var entry in targets)
                {
                    PlaceEmpty(entry, realDirectories);
                    counts.FilesWritten++;
                }

                continue;
            }

            var staged = store.StagedPath(group.Key);
            if (!File.Exists(staged))
            {
                // Consumed by the final rename of an earlier, interrupted run of this journal: all of its copies
                // were placed before that rename.
                continue;
            }

            for (var i = 0; i < targets.Count - 1; i++)
            {
                CopyInto(staged, targets[i], realDirectories);
                counts.FilesWritten++;
            }

            MoveInto(staged, targets[^1], realDirectories);
            counts.FilesWritten++;
        }

        // Files already in place may still need their executable bit changed.
        foreach (var entry in entries.Where(e => e.Kind == EntryKind.File && !e.Write))
        {
            var full = Full(entry.Path);
            var mode = WorkspaceTree.FileMode(entry.Executable);
            if (WorkspaceTree.Lstat(full) is { Kind: EntryKind.File } disk && disk.Mode != mode)
            {
                Change($"chmod {entry.Path}");
                WorkspaceTree.SetMode(full, mode);
            }
        }
    }

    private void PlaceSymlinks(IReadOnlyList<TreeEntry> entries, HashSet<string> realDirectories, ApplyCounts counts)
    {
        foreach (var entry in entries.Where(e => e.Kind == EntryKind.Symlink))
        {
            EnsureRealParent(entry.Path, realDirectories);
            var full = Full(entry.Path);
            var disk = WorkspaceTree.Lstat(full);
            if (disk is { Kind: EntryKind.Symlink } link && link.SymlinkTarget == entry.SymlinkTarget)
            {
                continue;
            }

            if (disk is { Kind: EntryKind.Directory })
            {
                Change($"delete {entry.Path}");
                counts.EntriesDeleted += (ulong)WorkspaceTree.Delete(full);
            }

            Change($"symlink {entry.Path}");
            var temp = WorkspaceTree.TempPathBeside(full);
            File.CreateSymbolicLink(temp, entry.SymlinkTarget);
            RenameInto(temp, full);
            counts.SymlinksWritten++;
        }
    }

    private void PlaceEmpty(TreeEntry entry, HashSet<string> realDirectories)
    {
        EnsureRealParent(entry.Path, realDirectories);
        var full = Full(entry.Path);
        Change($"write {entry.Path}");
        var temp = WorkspaceTree.TempPathBeside(full);
        File.WriteAllBytes(temp, []);
        WorkspaceTree.SetMode(temp, WorkspaceTree.FileMode(entry.Executable));
        RenameInto(temp, full);
    }

    private void CopyInto(string staged, TreeEntry entry, HashSet<string> realDirectories)
    {
        EnsureRealParent(entry.Path, realDirectories);
        var full = Full(entry.Path);
        Change($"write {entry.Path}");
        CopyBeside(staged, full, entry.Executable);
    }

    private void MoveInto(string staged, TreeEntry entry, HashSet<string> realDirectories)
    {
        EnsureRealParent(entry.Path, realDirectories);
        var full = Full(entry.Path);
        Change($"write {entry.Path}");
        WorkspaceTree.SetMode(staged, WorkspaceTree.FileMode(entry.Executable));
        if (WorkspaceTree.TryRename(staged, full))
        {
            return;
        }

        // The state directory is on another filesystem: copy beside the target, rename that into place, and only
        // then drop the staged blob (its absence tells a replay this group is done).
        CopyBeside(staged, full, entry.Executable);
        File.Delete(staged);
    }

    /// <summary>Copies <paramref name="staged"/> to a temporary name beside <paramref name="full"/> and renames it into place.</summary>
    private static void CopyBeside(string staged, string full, bool executable)
    {
        var temp = WorkspaceTree.TempPathBeside(full);
        File.Copy(staged, temp);
        WorkspaceTree.SetMode(temp, WorkspaceTree.FileMode(executable));
        RenameInto(temp, full);
    }

    private static void RenameInto(string temp, string full)
    {
        if (!WorkspaceTree.TryRename(temp, full))
        {
            throw new IOException($"rename '{temp}' -> '{full}' crossed filesystems inside one directory.");
        }
    }

    /// <summary>Refuses to write through a symlink or a file standing where a parent directory should be.</summary>
    private void EnsureRealParent(string path, HashSet<string> realDirectories)
    {
        var slash = path.LastIndexOf('/');
        var parent = slash < 0 ? "" : path[..slash];
        if (realDirectories.Contains(parent))
        {
            return;
        }

        EnsureRealParent(parent, realDirectories);
        if (WorkspaceTree.Lstat(Full(parent)) is not { Kind: EntryKind.Directory })
        {
            throw new IOException($"'{parent}' in the workspace is not a real directory; refusing to write '{path}' through it.");
        }

        realDirectories.Add(parent);
    }

    private void Change(string what) => BeforeChange?.Invoke(what);

    private string Full(string path) => Path.Combine(Workspace, path);

    private static bool IsUnderAny(string path, HashSet<string> directories)
    {
        for (var slash = path.LastIndexOf('/'); slash > 0; slash = path.LastIndexOf('/', slash - 1))
        {
            if (directories.Contains(path[..slash]))
            {
                return true;
            }
        }

        return false;
    }
}
