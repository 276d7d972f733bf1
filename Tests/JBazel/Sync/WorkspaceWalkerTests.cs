using Rbs.JBazel.Sync;
using Rbs.V1;

namespace Rbs.Tests.JBazel.Sync;

/// <summary>What the sync sends, on real directory trees.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class WorkspaceWalkerTests : IDisposable
{
    // git's ignore rules are opt-in (--rbs_sync_gitignore): bazel's glob() reads git-ignored files.
    private static readonly WalkOptions s_git = new([], UseGitignore: true);

    private readonly SyncTree _tree = new();

    public void Dispose() => _tree.Dispose();

    [Fact]
    public void FilesExecutablesEmptyDirectoriesAndSortOrder()
    {
        _tree.Write("MODULE.bazel", "");
        _tree.Write("src/main.c", "int main() {}");
        _tree.Write("tools/run.sh", "#!/bin/sh\n", executable: true);
        _tree.Write("a-b", "dash");
        _tree.Mkdir("empty/inner");
        _tree.Mkdir("src/also-empty");

        Assert.Equal(
            ["MODULE.bazel f", "a-b f", "empty/inner d", "src/also-empty d", "src/main.c f", "tools/run.sh x"],
            _tree.Listing());
    }

    [Fact]
    public void OnlyExecuteBitsOfAnyClassMakeAFileExecutable()
    {
        var path = _tree.Write("other-x", "x");
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.OtherExecute);
        _tree.Write("plain", "p");
        Assert.Equal(["other-x x", "plain f"], _tree.Listing());
    }

    [Fact]
    public void UnicodeNamesAreSentAsTheyAre()
    {
        _tree.Write("données/été.txt", "1");
        _tree.Write("日本語/ファイル", "2");
        _tree.Write("emoji/\U0001F600.md", "3");
        _tree.Write("emoji/\uFF21.md", "4");
        Assert.Equal(["données/été.txt f", "emoji/\uFF21.md f", "emoji/\U0001F600.md f", "日本語/ファイル f"], _tree.Listing());
    }

    [Fact]
    public void BazelConvenienceSymlinksAndJbazelOutAreNeverSentButGitAndRegularBazelNamesAre()
    {
        var outside = Path.Combine(_tree.Base, "output-base");
        Directory.CreateDirectory(outside);
        File.WriteAllText(Path.Combine(outside, "big"), "x");
        _tree.Symlink("bazel-bin", outside);
        _tree.Symlink("bazel-ws", outside);
        _tree.Mkdir("bazel-real-dir");
        _tree.Write("bazel-notes.txt", "a user's file: glob() reads it");
        _tree.Write("jbazel-out/app", "fetched");
        _tree.Write(".git/HEAD", "ref: refs/heads/main");
        _tree.Write("sub/.git", "gitdir: ../.git/modules/sub");
        _tree.Write("sub/bazel-not-root", "kept: only root-level bazel-* are bazel's");
        _tree.Write("sub/jbazel-out/kept", "kept: only the root jbazel-out");

        Assert.Equal(
            [".git/HEAD f", "bazel-notes.txt f", "bazel-real-dir d", "sub/.git f", "sub/bazel-not-root f", "sub/jbazel-out/kept f"],
            _tree.Listing());
    }

    [Fact]
    public void GitIgnoredFilesAreSentByDefaultBecauseGlobReadsThem()
    {
        _tree.Write(".gitignore", "*.gen\nout/\n");
        _tree.Write("data.gen", "");
        _tree.Write("out/x", "");
        Assert.Equal([".gitignore f", "data.gen f", "out/x f"], _tree.Listing());
        Assert.Equal([".gitignore f"], _tree.Listing(s_git));
    }

    [Fact]
    public void FilesBazelReadsAreSentEvenWhenGitIgnoresThemOrTheirDirectory()
    {
        _tree.Write(".gitignore", "user.bazelrc\n.bazelversion\n/tools/\nlocal/\nvendor/\n*.tmp\n");
        _tree.Write("WORKSPACE", "local_repository(name = \"v\", path = \"vendor/lib\")  # comment: path = \"nope\"\n");
        _tree.Write(".bazelrc", "try-import %workspace%/user.bazelrc\ntry-import %workspace%/local/more.bazelrc\n");
        _tree.Write("user.bazelrc", "build --define=x=1\n");
        _tree.Write("local/more.bazelrc", "build --define=y=2\n");
        _tree.Write("local/other.txt", "still ignored");
        _tree.Write(".bazelversion", "4.2.3\n");
        _tree.Write("tools/bazel", "#!/bin/sh\n", executable: true);
        _tree.Write("tools/unrelated.sh", "ignored");
        _tree.Write("vendor/lib/WORKSPACE", "");
        _tree.Write("vendor/lib/cache.tmp", "inside a local repository: bazel reads all of it");
        _tree.Write("vendor/other/x", "ignored");

        var warnings = new List<string>();
        var rcFiles = ClientRcFiles.Collect(["build"], _tree.Root, _tree.Root, home: null).WorkspaceFiles;
        var required = BazelReads.Find(_tree.Root, rcFiles, warnings);
        Assert.Empty(warnings);
        Assert.Equal([".bazelrc", "local/more.bazelrc", "user.bazelrc"], rcFiles);

        Assert.Equal(
            [".bazelrc f", ".bazelversion f", ".gitignore f", "WORKSPACE f", "local/more.bazelrc f", "tools/bazel x", "user.bazelrc f",
             "vendor/lib/WORKSPACE f", "vendor/lib/cache.tmp f"],
            _tree.Listing(s_git with { Required = required }));
    }

    [Fact]
    public void AnExcludeWinsOverABazelReadWithAWarning()
    {
        _tree.Write(".bazelversion", "4.2.3\n");
        var manifest = _tree.Build(new WalkOptions(["/.bazelversion"], UseGitignore: false, new RequiredPaths(BazelReads.RootFiles)));
        Assert.Empty(manifest.Entries);
        Assert.Contains(manifest.Warnings, w => w.Contains("--rbs_sync_exclude leaves out .bazelversion, which bazel reads", StringComparison.Ordinal));
    }

    [Fact]
    public void ALocalRepositoryOutsideTheWorkspaceIsAWarning()
    {
        _tree.Write("WORKSPACE", "new_local_repository(\n    name = 'x',\n    path = '/opt/elsewhere',\n    build_file = '//third_party:x.BUILD',\n)\n");
        var warnings = new List<string>();
        var required = BazelReads.Find(_tree.Root, [], warnings);
        Assert.Contains("third_party/x.BUILD", required.Paths);
        Assert.Contains(warnings, w => w.Contains("new_local_repository(path = \"/opt/elsewhere\") is outside the workspace", StringComparison.Ordinal));
    }

    [Fact]
    public void AWorktreeIsSentWithASelfContainedGitDirectoryAndItsCommonDirectorysExclude()
    {
        // A real `git worktree add`: .git is a file naming <repo>/.git/worktrees/wt, whose commondir leads back.
        using var repo = new SyncTree("main");
        Git(repo.Root, "init", "-q", "-b", "main");
        repo.Write("tracked.txt", "v1\n");
        Git(repo.Root, "add", "tracked.txt");
        Git(repo.Root, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one");
        var worktree = Path.Combine(repo.Base, "wt");
        Git(repo.Root, "worktree", "add", "-q", "-b", "feature", worktree);
        File.WriteAllText(Path.Combine(repo.Root, ".git", "info", "exclude"), "*.secret\n");
        File.WriteAllText(Path.Combine(worktree, "key.secret"), "");
        File.WriteAllText(Path.Combine(repo.Root, ".git", "MERGE_HEAD"), "the main worktree's own state\n");

        var manifest = new ClientManifestBuilder(worktree, s_git, null, TimeProvider.System).Build(CancellationToken.None);
        var paths = manifest.Entries.Select(e => e.Path).ToList();
        Assert.DoesNotContain("key.secret", paths);
        Assert.Contains("tracked.txt", paths);
        Assert.Contains(".git/HEAD", paths);
        Assert.Contains(".git/index", paths);
        Assert.Contains(".git/config", paths);
        Assert.DoesNotContain(".git/MERGE_HEAD", paths);
        Assert.DoesNotContain(".git/commondir", paths);
        Assert.DoesNotContain(paths, p => p.StartsWith(".git/worktrees/", StringComparison.Ordinal));

        // The copy is a repository of its own, on the worktree's branch and commit.
        var copy = Path.Combine(repo.Base, "copy");
        foreach (var entry in manifest.Entries)
        {
            var target = Path.Combine(copy, entry.Path);
            if (entry.Kind == EntryKind.Directory)
            {
                Directory.CreateDirectory(target);
                continue;
            }

            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(manifest.Blobs[entry.Digest].FullPath, target);
        }

        Assert.Equal("feature", Git(copy, "rev-parse", "--abbrev-ref", "HEAD").Trim());
        Assert.Equal(Git(worktree, "rev-parse", "HEAD"), Git(copy, "rev-parse", "HEAD"));
        Assert.Equal("", Git(copy, "status", "--porcelain", "--untracked-files=no"));
    }

    private static string Git(string directory, params string[] args)
    {
        var start = new System.Diagnostics.ProcessStartInfo("git") { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["GIT_CONFIG_NOSYSTEM"] = "1";
        start.Environment["HOME"] = directory;
        using var git = System.Diagnostics.Process.Start(start)!;
        var stdout = git.StandardOutput.ReadToEnd();
        var stderr = git.StandardError.ReadToEnd();
        Assert.True(git.WaitForExit(30_000), $"git {string.Join(' ', args)} did not finish");
        Assert.True(git.ExitCode == 0, $"git {string.Join(' ', args)}: {stderr}");
        return stdout;
    }

    [Fact]
    public void SymlinksInsideAreKeptOutsideAreDereferencedOrSkipped()
    {
        _tree.Write("lib/real.txt", "real");
        _tree.Symlink("lib/same-dir", "real.txt");
        _tree.Symlink("up/link", "../lib/real.txt");
        _tree.Symlink("dirlink", "lib");
        _tree.Symlink("dangling", "lib/missing");
        _tree.Symlink("root-itself", ".");
        var outsideFile = Path.Combine(_tree.Base, "outside.txt");
        File.WriteAllText(outsideFile, "from outside");
        var outsideDir = Path.Combine(_tree.Base, "outside-dir");
        Directory.CreateDirectory(outsideDir);
        _tree.Symlink("abs-file", outsideFile);
        _tree.Symlink("rel-escape-file", "../outside.txt");
        _tree.Symlink("escape-dir", "../outside-dir");
        _tree.Symlink("escape-missing", "../nowhere");
        _tree.Symlink("lib/sneaky", "../../outside.txt");

        var manifest = _tree.Build();
        Assert.Equal(
        [
            "abs-file f", "dangling l -> lib/missing", "dirlink l -> lib", "lib/real.txt f", "lib/same-dir l -> real.txt",
            "lib/sneaky f", "rel-escape-file f", "root-itself l -> .", "up/link l -> ../lib/real.txt",
        ], SyncTree.Describe(manifest.Entries));

        // A dereferenced link carries the target's content.
        var deref = manifest.Entries.Single(e => e.Path == "abs-file");
        Assert.Equal((ulong)"from outside".Length, deref.Size);
        Assert.Equal(2, manifest.Warnings.Count);
        Assert.Contains(manifest.Warnings, w => w.Contains("escape-dir -> ../outside-dir", StringComparison.Ordinal));
        Assert.Contains(manifest.Warnings, w => w.Contains("escape-missing -> ../nowhere", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("a/link", "../b", true)]
    [InlineData("a/link", "../../b", false)]
    [InlineData("link", "./x/../y", true)]
    [InlineData("link", "..", false)]
    [InlineData("a/b/link", "../../x", true)]
    [InlineData("link", "/etc/passwd", false)]
    [InlineData("link", "x/../../y", false)]
    public void SymlinkContainmentIsLexical(string link, string target, bool inside) =>
        Assert.Equal(inside, WorkspaceWalker.StaysInside(link, target));

    [Fact]
    public void GitignoreNameAnchoredAndDirectoryOnlyPatterns()
    {
        _tree.Write(".gitignore", "*.log\n/top.txt\nbuild/\ndocs/*.md\n# a comment\n");
        _tree.Write("app.log", "");
        _tree.Write("deep/er/app.log", "");
        _tree.Write("top.txt", "");
        _tree.Write("sub/top.txt", "");
        _tree.Write("build/out.o", "");
        _tree.Write("sub/build", "a file named build is not a directory");
        _tree.Write("docs/readme.md", "");
        _tree.Write("docs/api/readme.md", "");
        _tree.Write("sub/docs/readme.md", "");

        Assert.Equal(
            [".gitignore f", "deep/er d", "docs/api/readme.md f", "sub/build f", "sub/docs/readme.md f", "sub/top.txt f"],
            _tree.Listing(s_git));
    }

    [Fact]
    public void NegationReincludesButNotInsideAnIgnoredDirectory()
    {
        _tree.Write(".gitignore", "*.txt\n!keep.txt\nout/\n!out/keep.bin\n");
        _tree.Write("drop.txt", "");
        _tree.Write("keep.txt", "");
        _tree.Write("x/keep.txt", "");
        _tree.Write("out/keep.bin", "");

        Assert.Equal([".gitignore f", "keep.txt f", "x/keep.txt f"], _tree.Listing(s_git));
    }

    [Fact]
    public void NestedGitignoresApplyBelowTheirDirectoryAndOverrideParents()
    {
        _tree.Write(".gitignore", "*.dat\n");
        _tree.Write("a/.gitignore", "*.tmp\n!important.dat\n/local-only\n");
        _tree.Write("x.tmp", "");
        _tree.Write("x.dat", "");
        _tree.Write("a/x.tmp", "");
        _tree.Write("a/b/y.tmp", "");
        _tree.Write("a/important.dat", "");
        _tree.Write("a/other.dat", "");
        _tree.Write("a/local-only", "");
        _tree.Write("a/b/local-only", "");

        Assert.Equal(
            [".gitignore f", "a/.gitignore f", "a/b/local-only f", "a/important.dat f", "x.tmp f"],
            _tree.Listing(s_git));
    }

    [Fact]
    public void DoubleStarPatterns()
    {
        _tree.Write(".gitignore", "**/gen/*.c\nlogs/**\na/**/z\n");
        _tree.Write("gen/x.c", "");
        _tree.Write("p/q/gen/x.c", "");
        _tree.Write("p/q/gen/x.h", "");
        _tree.Write("logs/today/1", "");
        _tree.Write("a/z", "");
        _tree.Write("a/m/n/z", "");
        _tree.Write("a/m/n/y", "");

        Assert.Equal([".gitignore f", "a/m/n/y f", "gen d", "logs d", "p/q/gen/x.h f"], _tree.Listing(s_git));
    }

    [Fact]
    public void GitInfoExcludeAndGitignoresAboveTheWorkspaceRootApply()
    {
        using var repo = new SyncTree("repo");
        var workspace = Path.Combine(repo.Root, "project");
        Directory.CreateDirectory(Path.Combine(repo.Root, ".git", "info"));
        File.WriteAllText(Path.Combine(repo.Root, ".git", "info", "exclude"), "*.secret\n");
        File.WriteAllText(Path.Combine(repo.Root, ".gitignore"), "/project/generated/\n*.bak\n");
        repo.Write("project/src/a.c", "");
        repo.Write("project/src/a.c.bak", "");
        repo.Write("project/key.secret", "");
        repo.Write("project/generated/x", "");

        var manifest = new ClientManifestBuilder(workspace, s_git, null, TimeProvider.System).Build(CancellationToken.None);
        Assert.Equal(["src/a.c f"], SyncTree.Describe(manifest.Entries));
    }

    [Fact]
    public void GitignoreCanBeTurnedOffButExcludesStillApplyAndBazelignoredDirectoriesAreSent()
    {
        _tree.Write(".gitignore", "*.log\n");
        _tree.Write(".bazelignore", "# node stuff\nnode_modules\n./third_party/big/\n");
        _tree.Write("a.log", "");
        _tree.Write("node_modules/x/index.js", "");
        _tree.Write("sub/node_modules/kept.js", "");
        _tree.Write("third_party/big/blob", "");
        _tree.Write("third_party/small/file", "");
        _tree.Write("data/huge.bin", "");
        _tree.Write("data/keep.me", "");
        _tree.Write("scratch.tmp", "");

        var options = new WalkOptions(["/data/*", "!/data/keep.me", "*.tmp"], UseGitignore: false);
        Assert.Equal(
            // .bazelignore stops only bazel's package discovery; local_repository(path = ...) still reads below it.
            [".bazelignore f", ".gitignore f", "a.log f", "data/keep.me f", "node_modules/x/index.js f", "sub/node_modules/kept.js f",
             "third_party/big/blob f", "third_party/small/file f"],
            _tree.Listing(options));

        Assert.DoesNotContain("a.log f", _tree.Listing(options with { UseGitignore = true }));
    }

    [Fact]
    public void ADirectoryWhoseContentIsAllIgnoredIsSentEmpty()
    {
        _tree.Write(".gitignore", "*.o\n");
        _tree.Write("obj/a.o", "");
        Assert.Equal([".gitignore f", "obj d"], _tree.Listing(s_git));
    }
}
