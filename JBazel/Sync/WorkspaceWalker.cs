using System.IO.Enumeration;

namespace Rbs.JBazel.Sync;

/// <summary>What the walk includes besides the fixed rules.</summary>
/// <param name="Excludes">The user's <c>--rbs_sync_exclude</c> patterns (gitignore syntax, relative to the workspace root).</param>
/// <param name="UseGitignore">Leave out what git ignores (.gitignore files, info/exclude; <c>--rbs_sync_gitignore</c>, off by default).</param>
/// <param name="Required">Paths bazel is known to read, carried even when git ignores them (<see cref="BazelReads"/>).</param>
internal sealed record WalkOptions(IReadOnlyList<string> Excludes, bool UseGitignore, RequiredPaths? Required = null)
{
    public static WalkOptions Default { get; } = new([], UseGitignore: false);
}

/// <summary>One path the sync sends, before its content is digested.</summary>
/// <param name="Path">Workspace-relative, '/'-separated.</param>
/// <param name="Kind">File, Directory (empty ones only) or Symlink.</param>
/// <param name="FullPath">Where to read a file's content (for a dereferenced symlink: the link, which read() follows).</param>
/// <param name="Stat">The file's stat (the target's for a dereferenced symlink): the digest cache's key.</param>
/// <param name="SymlinkTarget">A symlink's target exactly as stored.</param>
internal sealed record WalkedEntry(string Path, FileKind Kind, string FullPath, FileStat Stat, string? SymlinkTarget = null);

/// <summary>The walk's result, unsorted.</summary>
internal sealed record WalkResult(IReadOnlyList<WalkedEntry> Entries, IReadOnlyList<string> Warnings);

/// <summary>
/// Enumerates the workspace the way the agent must see it: everything bazel can read. Always skipped, each because the
/// agent has its own: root-level <c>bazel-*</c> symlinks (bazel's convenience symlinks into this machine's output base;
/// the agent's bazel makes its own, and a regular file or directory named <c>bazel-*</c> is sent) and the root
/// <c>jbazel-out/</c> (copies of the agent's own outputs: sent back they would become inputs of its next build).
/// <c>.git</c> is sent (a <c>--workspace_status_command</c> runs git, <c>glob()</c> sees it); a <c>.git</c> file naming
/// a repository outside the workspace (a worktree) is sent as one self-contained <c>.git</c> directory.
/// Directories listed in <c>.bazelignore</c> are sent: that file only stops bazel's package discovery.
/// Then the user's excludes and, only when asked (<c>--rbs_sync_gitignore</c>), git's ignore rules (.gitignore at every
/// level, including those between the git root and the workspace root, and info/exclude of the repository's common
/// directory) — except for <see cref="WalkOptions.Required"/> paths, which bazel reads whatever git says. An ignored
/// directory is not entered unless a required path is below it. Symlinks whose relative target stays inside the
/// workspace are sent as symlinks; one pointing outside is sent as the regular file it points to, or skipped with a warning.
/// </summary>
internal static class WorkspaceWalker
{
    public const string OutputsFolder = "jbazel-out";

    public static WalkResult Walk(string root, WalkOptions options, CancellationToken cancellationToken)
    {
        root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        var entries = new List<WalkedEntry>();
        var warnings = new List<string>();
        var excludes = IgnoreStack.Empty.Push(IgnoreList.Parse("", options.Excludes));
        var required = options.Required ?? RequiredPaths.None;

        // Git's rules are relative to the git root, which may be above the workspace root.
        var gitPrefix = "";
        var gitIgnores = IgnoreStack.Empty;
        if (options.UseGitignore)
        {
            (gitPrefix, gitIgnores) = GitRules(root);
        }

        var pending = new Stack<(string Relative, string Full, IgnoreStack Ignores, Mode Mode)>();
        pending.Push(("", root, gitIgnores, Mode.Normal));
        while (pending.Count > 0)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var (dirRelative, dirFull, ignores, mode) = pending.Pop();
            if (options.UseGitignore && mode != Mode.Forced)
            {
                ignores = ignores.Push(IgnoreList.Read(Join(gitPrefix, dirRelative), Path.Combine(dirFull, ".gitignore")));
            }

            var included = 0;
            var names = ListNames(dirFull);
            if (names is null)
            {
                warnings.Add($"skipping the content of {(dirRelative.Length == 0 ? "the workspace root" : dirRelative)}: it cannot be read");
                continue;
            }

            foreach (var name in names)
            {
                var relative = Join(dirRelative, name);
                var full = dirFull + "/" + name;
                if (dirRelative.Length == 0 && name == OutputsFolder)
                {
                    continue;
                }

                var stat = FileStats.Get(full, follow: false);
                var isDirectory = stat.Kind == FileKind.Directory;
                if (stat.Kind == FileKind.Missing
                    || (dirRelative.Length == 0 && stat.Kind == FileKind.Symlink && name.StartsWith("bazel-", StringComparison.Ordinal)))
                {
                    continue;
                }

                var isRequired = mode == Mode.Forced || required.IsRequired(relative);
                if (excludes.IsIgnored(relative, name, isDirectory))
                {
                    if (isRequired && mode != Mode.Forced)
                    {
                        warnings.Add($"--rbs_sync_exclude leaves out {relative}, which bazel reads; bazel on the agent will not find it");
                    }

                    continue;
                }

                // git never applies its ignore rules to .git itself.
                var gitIgnored = mode == Mode.PathOnly || (name != ".git" && ignores.IsIgnored(Join(gitPrefix, relative), name, isDirectory));
                var childMode = isRequired ? Mode.Forced : mode;
                if (gitIgnored && !isRequired)
                {
                    if (!isDirectory || !required.LeadsTo(relative))
                    {
                        continue;
                    }

                    // Ignored, but a path bazel reads is below it: enter it for that path only.
                    childMode = Mode.PathOnly;
                }

                if (name == ".git" && stat.Kind == FileKind.File && Worktree(root, relative, full, entries, warnings))
                {
                    included++;
                    continue;
                }

                switch (stat.Kind)
                {
                    case FileKind.Directory:
                        pending.Push((relative, full, ignores, childMode));
                        included++;
                        break;
                    case FileKind.File:
                        entries.Add(new WalkedEntry(relative, FileKind.File, full, stat));
                        included++;
                        break;
                    case FileKind.Symlink:
                        if (Symlink(relative, full, warnings) is { } link)
                        {
                            entries.Add(link);
                            included++;
                        }

                        break;
                    default:
                        warnings.Add($"skipping {relative}: not a regular file, directory or symlink");
                        break;
                }
            }

            if (included == 0 && dirRelative.Length > 0 && mode != Mode.PathOnly)
            {
                entries.Add(new WalkedEntry(dirRelative, FileKind.Directory, dirFull, FileStat.Missing));
            }
        }

        return new WalkResult(entries, warnings);
    }

    /// <summary>How a directory's entries are chosen.</summary>
    private enum Mode
    {
        /// <summary>Excludes and (if on) git's rules decide.</summary>
        Normal,

        /// <summary>Bazel reads all of it: only the user's excludes can leave something out.</summary>
        Forced,

        /// <summary>Git ignores it: only the required paths below it are sent.</summary>
        PathOnly,
    }

    /// <summary>
    /// A <c>.git</c> file naming a repository outside the workspace (a worktree, a separate git dir): its content is
    /// sent as one self-contained <c>.git</c> directory instead, since the agent has nothing at that path (or, on this
    /// machine, the checkout's own repository, which git there must not write to). False when it names a directory
    /// inside the workspace (a submodule's <c>gitdir: ../.git/modules/x</c>): then the file is sent as it is.
    /// </summary>
    private static bool Worktree(string root, string relative, string full, List<WalkedEntry> entries, List<string> warnings)
    {
        var gitDir = GitDirectories.ReadGitFile(full);
        if (gitDir is null || gitDir.StartsWith(root + "/", StringComparison.Ordinal))
        {
            return false;
        }

        if (!Directory.Exists(gitDir))
        {
            warnings.Add($"skipping {relative}: it names the git directory {gitDir}, which does not exist");
            return true;
        }

        foreach (var (path, source, isDirectory) in GitDirectories.SelfContained(gitDir, GitDirectories.CommonDir(gitDir)))
        {
            entries.Add(isDirectory
                ? new WalkedEntry(relative + "/" + path, FileKind.Directory, source, FileStat.Missing)
                : new WalkedEntry(relative + "/" + path, FileKind.File, source, FileStats.Get(source, follow: true)));
        }

        return true;
    }

    /// <summary>Whether a symlink at <paramref name="linkPath"/> with this stored target resolves inside the workspace (lexically).</summary>
    public static bool StaysInside(string linkPath, string target)
    {
        if (target.Length == 0 || target[0] == '/' || Path.IsPathRooted(target))
        {
            return false;
        }

        var depth = linkPath.Count(c => c == '/');
        foreach (var segment in target.Split('/'))
        {
            if (segment.Length == 0 || segment == ".")
            {
                continue;
            }

            depth += segment == ".." ? -1 : 1;
            if (depth < 0)
            {
                return false;
            }
        }

        return true;
    }

    private static WalkedEntry? Symlink(string relative, string full, List<string> warnings)
    {
        string? target;
        try
        {
            target = new FileInfo(full).LinkTarget;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            warnings.Add($"skipping symlink {relative}: {ex.Message}");
            return null;
        }

        if (target is null)
        {
            return null;
        }

        if (StaysInside(relative, target))
        {
            return new WalkedEntry(relative, FileKind.Symlink, full, FileStat.Missing, target);
        }

        // Outside the workspace the agent has nothing to point at: send what a build would read.
        var resolved = FileStats.Get(full, follow: true);
        if (resolved.Kind == FileKind.File)
        {
            return new WalkedEntry(relative, FileKind.File, full, resolved);
        }

        warnings.Add($"skipping symlink {relative} -> {target}: it points outside the workspace, and not to a regular file");
        return null;
    }

    private static List<string>? ListNames(string directory)
    {
        try
        {
            return new FileSystemEnumerable<string>(
                directory,
                (ref entry) => entry.FileName.ToString(),
                new EnumerationOptions { IgnoreInaccessible = false, AttributesToSkip = 0, RecurseSubdirectories = false, ReturnSpecialDirectories = false })
                .ToList();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The workspace root's path below the git root, and the git rules that apply above the workspace root.</summary>
    private static (string Prefix, IgnoreStack Rules) GitRules(string root)
    {
        string? gitRoot = null;
        for (var dir = new DirectoryInfo(root); dir is not null; dir = dir.Parent)
        {
            var dotGit = Path.Combine(dir.FullName, ".git");
            if (Directory.Exists(dotGit) || File.Exists(dotGit))
            {
                gitRoot = Path.TrimEndingDirectorySeparator(dir.FullName);
                break;
            }
        }

        if (gitRoot is null)
        {
            // Not in a git repository: the workspace's own .gitignore files still say what is noise.
            return ("", IgnoreStack.Empty);
        }

        // info/exclude lives in the common directory: a worktree's .git file names .git/worktrees/NAME, whose
        // commondir file leads back to the repository's .git.
        var gitDir = GitDirectories.GitDir(Path.Combine(gitRoot, ".git"));
        var rules = gitDir is null
            ? IgnoreStack.Empty
            : IgnoreStack.Empty.Push(IgnoreList.Read("", Path.Combine(GitDirectories.CommonDir(gitDir), "info", "exclude")));
        var prefix = Path.GetRelativePath(gitRoot, root).Replace(Path.DirectorySeparatorChar, '/');
        if (prefix == ".")
        {
            return ("", rules);
        }

        // .gitignore files from the git root down to the workspace root's parent.
        var segments = prefix.Split('/');
        var relative = "";
        var full = gitRoot;
        for (var i = 0; i < segments.Length; i++)
        {
            rules = rules.Push(IgnoreList.Read(relative, Path.Combine(full, ".gitignore")));
            relative = Join(relative, segments[i]);
            full = Path.Combine(full, segments[i]);
        }

        return (prefix, rules);
    }

    private static string Join(string parent, string name) => parent.Length == 0 ? name : name.Length == 0 ? parent : parent + "/" + name;
}
