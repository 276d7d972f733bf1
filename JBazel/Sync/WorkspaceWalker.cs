using System.IO.Enumeration;

namespace Rbs.JBazel.Sync;

/// <summary>What the walk includes besides the fixed rules.</summary>
/// <param name="Excludes">The user's <c>--rbs_sync_exclude</c> patterns (gitignore syntax, relative to the workspace root).</param>
/// <param name="UseGitignore">Respect .gitignore files and .git/info/exclude (<c>--rbs_sync_gitignore</c>).</param>
internal sealed record WalkOptions(IReadOnlyList<string> Excludes, bool UseGitignore)
{
    public static WalkOptions Default { get; } = new([], UseGitignore: true);
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
/// Enumerates the workspace the way the agent must see it. Always skipped: root-level <c>bazel-*</c>
/// (bazel's convenience symlinks), the root <c>jbazel-out/</c> (fetched outputs), every <c>.git</c>,
/// directories listed in <c>.bazelignore</c>. Then the user's excludes and, unless turned off, git's
/// ignore rules (.gitignore at every level, including those between the git root and the workspace
/// root, and .git/info/exclude). An ignored directory is not entered, so nothing below it can be
/// re-included (as in git). Symlinks whose relative target stays inside the workspace are sent as
/// symlinks; one pointing outside is sent as the regular file it points to, or skipped with a warning.
/// </summary>
internal static class WorkspaceWalker
{
    public const string OutputsFolder = "jbazel-out";
    public const string BazelIgnoreFile = ".bazelignore";

    public static WalkResult Walk(string root, WalkOptions options, CancellationToken cancellationToken)
    {
        root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        var entries = new List<WalkedEntry>();
        var warnings = new List<string>();
        var bazelIgnored = ReadBazelIgnore(root);
        var excludes = IgnoreStack.Empty.Push(IgnoreList.Parse("", options.Excludes));

        // Git's rules are relative to the git root, which may be above the workspace root.
        var gitPrefix = "";
        var gitIgnores = IgnoreStack.Empty;
        if (options.UseGitignore)
        {
            (gitPrefix, gitIgnores) = GitRules(root);
        }

        var pending = new Stack<(string Relative, string Full, IgnoreStack Ignores)>();
        pending.Push(("", root, gitIgnores));
        while (pending.Count > 0)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var (dirRelative, dirFull, ignores) = pending.Pop();
            if (options.UseGitignore)
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
                if (name == ".git" || (dirRelative.Length == 0 && (name.StartsWith("bazel-", StringComparison.Ordinal) || name == OutputsFolder)))
                {
                    continue;
                }

                var stat = FileStats.Get(full, follow: false);
                var isDirectory = stat.Kind == FileKind.Directory;
                if (stat.Kind == FileKind.Missing
                    || (isDirectory && bazelIgnored.Contains(relative))
                    || excludes.IsIgnored(relative, name, isDirectory)
                    || ignores.IsIgnored(Join(gitPrefix, relative), name, isDirectory))
                {
                    continue;
                }

                switch (stat.Kind)
                {
                    case FileKind.Directory:
                        pending.Push((relative, full, ignores));
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

            if (included == 0 && dirRelative.Length > 0)
            {
                entries.Add(new WalkedEntry(dirRelative, FileKind.Directory, dirFull, FileStat.Missing));
            }
        }

        return new WalkResult(entries, warnings);
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

    /// <summary>bazel's .bazelignore: one workspace-relative directory per line, '#' comments.</summary>
    internal static HashSet<string> ReadBazelIgnore(string root)
    {
        var paths = new HashSet<string>(StringComparer.Ordinal);
        var file = Path.Combine(root, BazelIgnoreFile);
        try
        {
            if (!File.Exists(file))
            {
                return paths;
            }

            foreach (var raw in File.ReadLines(file))
            {
                var line = raw.Trim();
                if (line.Length == 0 || line.StartsWith('#'))
                {
                    continue;
                }

                while (line.StartsWith("./", StringComparison.Ordinal))
                {
                    line = line[2..];
                }

                line = line.TrimEnd('/');
                if (line.Length > 0)
                {
                    paths.Add(line);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }

        return paths;
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

        var rules = IgnoreStack.Empty.Push(IgnoreList.Read("", Path.Combine(gitRoot, ".git", "info", "exclude")));
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
