using System.Text;
using Grpc.Core;
using Rbs.Agent.Sync;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Agent.Sync;

/// <summary>rbs.v1.WorkspaceSync against a real agent host: round trips, incrementality, safety, atomicity.</summary>
public sealed class WorkspaceSyncTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task FirstSyncIsByteIdenticalAndASecondIdenticalSyncIsUpToDate()
    {
        using var dirs = new SyncDirs();
        var blob = new byte[300_000];
        new Random(42).NextBytes(blob);
        Write(dirs.Source, "bin/blob.bin", blob);
        Write(dirs.Source, "copy/blob-again.bin", blob);
        Write(dirs.Source, "tools/run.sh", "#!/bin/sh\necho hi\n"u8.ToArray(), executable: true);
        Write(dirs.Source, "ünïcödé/文件 with space.txt", "unicode"u8.ToArray());
        Write(dirs.Source, "empty.txt", []);
        Write(dirs.Source, ".hidden", "h"u8.ToArray());
        Directory.CreateDirectory(Path.Combine(dirs.Source, "empty-dir", "nested-empty"));
        File.CreateSymbolicLink(Path.Combine(dirs.Source, "link-to-run"), "tools/run.sh");
        File.CreateSymbolicLink(Path.Combine(dirs.Source, "tools", "up"), "../bin");
        File.CreateSymbolicLink(Path.Combine(dirs.Source, "dangling"), "does/not/exist");
        // bazel's convenience symlink on the agent belongs to bazel: never synced, deleted or counted.
        File.CreateSymbolicLink(Path.Combine(dirs.Workspace, "bazel-bin"), dirs.Outside);

        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        var tree = LocalTree.Scan(dirs.Source);
        var first = await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);

        TreeAssert.Equal(dirs.Source, dirs.Workspace);
        var done = first.Done!;
        output.WriteLine(done.ToString());
        Assert.False(done.UpToDate);
        Assert.Equal(6ul, done.FilesWritten);
        Assert.Equal(3ul, done.SymlinksWritten);
        Assert.Equal(4ul, done.BlobsReceived); // the two copies of blob.bin travel once; the empty file never
        Assert.Equal((ulong)(blob.Length + 18 + 7 + 1), done.BytesReceived);
        Assert.Equal(6ul, done.DirectoriesCreated); // bin copy tools ünïcödé empty-dir empty-dir/nested-empty
        Assert.Equal(0ul, done.EntriesDeleted);
        Assert.Equal((UnixFileMode)0b111_101_101, WorkspaceTree.Lstat(Path.Combine(dirs.Workspace, "tools/run.sh"))!.Value.Mode);
        Assert.Equal((UnixFileMode)0b110_100_100, WorkspaceTree.Lstat(Path.Combine(dirs.Workspace, "bin/blob.bin"))!.Value.Mode);
        Assert.Equal(dirs.Outside, new FileInfo(Path.Combine(dirs.Workspace, "bazel-bin")).LinkTarget);

        var second = await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);
        Assert.True(second.Done!.UpToDate);
        Assert.Empty(second.Needed);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
    }

    [Fact]
    public async Task RenamesAndCopiesUploadNothing()
    {
        using var dirs = new SyncDirs();
        var big = new byte[200_000];
        new Random(1).NextBytes(big);
        Write(dirs.Source, "a/big.bin", big);
        Write(dirs.Source, "docs/readme.md", "# readme"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);

        File.Move(Path.Combine(dirs.Source, "a/big.bin"), Path.Combine(dirs.Source, "moved.bin"));
        Directory.Move(Path.Combine(dirs.Source, "docs"), Path.Combine(dirs.Source, "documentation"));
        File.Copy(Path.Combine(dirs.Source, "moved.bin"), Path.Combine(dirs.Source, "documentation/copy.bin"));
        var outcome = await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);

        Assert.Empty(outcome.Needed);
        Assert.Equal(0ul, outcome.Done!.BlobsReceived);
        Assert.Equal(0ul, outcome.NeedEnd!.BlobBytes);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
    }

    [Fact]
    public async Task ModificationsDeletionsAndTypeChangesAreApplied()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Source, "a.txt", "one"u8.ToArray());
        Write(dirs.Source, "d/x.txt", "inside d"u8.ToArray());
        Write(dirs.Source, "f", "a file that becomes a directory"u8.ToArray());
        Write(dirs.Source, "s", "a file that becomes a symlink"u8.ToArray());
        Write(dirs.Source, "tool.sh", "#!/bin/sh\n"u8.ToArray(), executable: true);
        Write(dirs.Source, "del/gone.txt", "deleted"u8.ToArray());
        File.CreateSymbolicLink(Path.Combine(dirs.Source, "l"), "a.txt");
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);

        Write(dirs.Source, "a.txt", "one, modified"u8.ToArray());
        Directory.Delete(Path.Combine(dirs.Source, "d"), recursive: true);
        Write(dirs.Source, "d", "dir became a file"u8.ToArray());
        File.Delete(Path.Combine(dirs.Source, "f"));
        Write(dirs.Source, "f/inner.txt", "file became a dir"u8.ToArray());
        File.Delete(Path.Combine(dirs.Source, "s"));
        File.CreateSymbolicLink(Path.Combine(dirs.Source, "s"), "d");
        WorkspaceTree.SetMode(Path.Combine(dirs.Source, "tool.sh"), WorkspaceTree.RegularMode);
        Directory.Delete(Path.Combine(dirs.Source, "del"), recursive: true);
        File.Delete(Path.Combine(dirs.Source, "l"));
        File.CreateSymbolicLink(Path.Combine(dirs.Source, "l"), "f/inner.txt");
        var outcome = await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);

        output.WriteLine(TreeAssert.Dump(dirs.Workspace));
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
        Assert.True(outcome.Done!.EntriesDeleted >= 4, outcome.Done.ToString());
        Assert.Equal(2ul, outcome.Done.SymlinksWritten);
    }

    [Fact]
    public async Task ChangesMadeOnTheAgentsDiskAreRepairedEvenWithTheSameManifest()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Source, "keep.txt", "keep"u8.ToArray());
        Write(dirs.Source, "edit.txt", "original"u8.ToArray());
        Write(dirs.Source, "remove.txt", "remove"u8.ToArray());
        Write(dirs.Source, "mode.txt", "mode"u8.ToArray());
        var tree = LocalTree.Scan(dirs.Source);
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);

        Write(dirs.Workspace, "edit.txt", "edited on the agent"u8.ToArray());
        File.Delete(Path.Combine(dirs.Workspace, "remove.txt"));
        Write(dirs.Workspace, "extra.txt", "added on the agent"u8.ToArray());
        Directory.CreateDirectory(Path.Combine(dirs.Workspace, "extra-dir"));
        WorkspaceTree.SetMode(Path.Combine(dirs.Workspace, "mode.txt"), WorkspaceTree.ExecutableMode);
        var repaired = await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);

        Assert.False(repaired.Done!.UpToDate);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
        var again = await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);
        Assert.True(again.Done!.UpToDate);

        // Even one extra empty file (same digest, nothing else changed) is noticed.
        Write(dirs.Workspace, "sneaky", []);
        var sneaky = await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);
        Assert.False(sneaky.Done!.UpToDate);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
    }

    [Fact]
    public async Task TraversalAttemptsAreRejectedAndNothingIsWrittenOutside()
    {
        using var dirs = new SyncDirs();
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        var payload = "pwned"u8.ToArray();
        var attacks = new (string Name, Func<LocalTree> Tree, string Named)[]
        {
            ("absolute path", () => FileTree(Path.Combine(dirs.Outside, "abs.txt"), payload), "abs.txt"),
            ("leading ..", () => FileTree("../outside/dotdot.txt", payload), "../outside/dotdot.txt"),
            ("a/../../x", () => FileTree("a/../../outside/x.txt", payload), "a/../../outside/x.txt"),
            ("dot segment", () => FileTree("a/./x.txt", payload), "a/./x.txt"),
            ("empty segment", () => FileTree("a//x.txt", payload), "a//x.txt"),
            ("backslash", () => FileTree("a\\..\\..\\x.txt", payload), "backslash"),
            ("NUL", () => FileTree("a\0.txt", payload), "NUL"),
            ("long name", () => FileTree(new string('n', 256), payload), "longer than 255"),
            ("symlink escaping via ../..", () => LocalTree.Of(LocalTree.Symlink("sub/link", "../../outside")), "sub/link"),
            ("absolute symlink target", () => LocalTree.Of(LocalTree.Symlink("link", dirs.Outside)), "link"),
            ("symlink escaping through another symlink", () => Sorted(
                LocalTree.Symlink("a/up", ".."),
                LocalTree.Symlink("b", "a/up/a/up/..")), "'b'"),
            ("path through a symlinked dir", () =>
            {
                var tree = LocalTree.Of(LocalTree.Symlink("d", "../outside"));
                tree.Entries.Add(LocalTree.File(tree, "d/x.txt", payload));
                return tree;
            }, "d/x.txt"),
            ("path through a symlink staying inside", () =>
            {
                var tree = LocalTree.Of(LocalTree.Directory("real"), LocalTree.Symlink("via", "real"));
                tree.Entries.Add(LocalTree.File(tree, "via/x.txt", payload));
                return tree;
            }, "via/x.txt"),
            ("path through a file", () =>
            {
                var tree = new LocalTree();
                tree.Entries.Add(LocalTree.File(tree, "f", payload));
                tree.Entries.Add(LocalTree.File(tree, "f/x.txt", payload));
                return tree;
            }, "f/x.txt"),
        };

        foreach (var (name, makeTree, named) in attacks)
        {
            var tree = makeTree();
            var ex = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout));
            TestLog.Write(output, $"{name}: {ex.StatusCode} {ex.Status.Detail}");
            Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
            Assert.Contains(named, ex.Status.Detail, StringComparison.Ordinal);
        }

        Assert.Empty(Directory.EnumerateFileSystemEntries(dirs.Outside));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dirs.Workspace));
    }

    [Fact]
    public async Task AnExistingSymlinkOnTheAgentIsReplacedNotWrittenThrough()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Outside, "victim.txt", "must survive"u8.ToArray());
        // A symlink bazel created (bazel-out) and a stale one from outside the index: the manifest wants real
        // directories there, so both must be replaced, never followed.
        File.CreateSymbolicLink(Path.Combine(dirs.Workspace, "bazel-out"), dirs.Outside);
        File.CreateSymbolicLink(Path.Combine(dirs.Workspace, "stale"), dirs.Outside);
        Write(dirs.Source, "bazel-out/victim.txt", "overwritten?"u8.ToArray());
        Write(dirs.Source, "stale/victim.txt", "overwritten?"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);

        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);

        Assert.Equal("must survive", File.ReadAllText(Path.Combine(dirs.Outside, "victim.txt")));
        Assert.Single(Directory.EnumerateFileSystemEntries(dirs.Outside));
        Assert.Equal(EntryKind.Directory, WorkspaceTree.Lstat(Path.Combine(dirs.Workspace, "stale"))!.Value.Kind);
        Assert.Equal(EntryKind.Directory, WorkspaceTree.Lstat(Path.Combine(dirs.Workspace, "bazel-out"))!.Value.Kind);
        Assert.Equal("overwritten?", File.ReadAllText(Path.Combine(dirs.Workspace, "stale/victim.txt")));

        // Deleting a directory that holds a symlink to outside removes the link, not its target's contents.
        File.CreateSymbolicLink(Path.Combine(dirs.Workspace, "stale", "escape"), dirs.Outside);
        Directory.Delete(Path.Combine(dirs.Source, "stale"), recursive: true);
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        Assert.False(Path.Exists(Path.Combine(dirs.Workspace, "stale")));
        Assert.Equal("must survive", File.ReadAllText(Path.Combine(dirs.Outside, "victim.txt")));
    }

    [Fact]
    public async Task BatchedBlobsSyncByteIdenticallyLikeSingleChunks()
    {
        using var dirs = new SyncDirs();
        var big = new byte[300_000];
        new Random(7).NextBytes(big);
        Write(dirs.Source, "big.bin", big);
        Write(dirs.Source, "copy/big-again.bin", big);
        for (var i = 0; i < 40; i++)
        {
            Write(dirs.Source, $"pkg{i % 4}/f{i}.txt", Encoding.UTF8.GetBytes($"file {i}\n"));
        }

        Write(dirs.Source, "tools/run.sh", "#!/bin/sh\n"u8.ToArray(), executable: true);
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        var tree = LocalTree.Scan(dirs.Source);
        // Batches that end mid-blob, hold many whole blobs, and mix with single chunk frames' rules (64 KiB chunks).
        var first = await SyncTestClient.SyncAsync(agent.Client, tree, new SyncScript { BatchChunks = 3 }).WaitAsync(s_timeout);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
        Assert.Equal(42ul, first.Done!.BlobsReceived);

        Write(dirs.Source, "pkg1/f1.txt", "edited"u8.ToArray());
        var edit = await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source), new SyncScript { BatchChunks = 100 }).WaitAsync(s_timeout);
        Assert.Equal(1ul, edit.Done!.BlobsReceived);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
    }

    [Fact]
    public async Task ABatchWithOneBadChunkIsRefusedAsAWholeBeforeAnyOfItIsWritten()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Outside, "victim.txt", "must survive"u8.ToArray());
        Write(dirs.Source, "a.txt", "first"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        var before = TreeAssert.Dump(dirs.Workspace);

        Write(dirs.Source, "b.txt", "second"u8.ToArray());
        Write(dirs.Source, "c.txt", "third"u8.ToArray());
        Write(dirs.Source, "d.txt", "fourth"u8.ToArray());
        var tree = LocalTree.Scan(dirs.Source);
        var staging = Path.Combine(dirs.State, "staging");
        var hostile = new (string What, Func<BlobBatch, BlobBatch> Mangle)[]
        {
            ("wrong offset", b => With(b, 2, c => c.Offset = 1)),
            ("a chunk of another blob", b => With(b, 2, c => c.Digest = b.Chunks[0].Digest)),
            ("past the manifest's size", b => With(b, 2, c => c.Data = Google.Protobuf.ByteString.CopyFrom(new byte[c.Data.Length + 1]))),
            ("an unneeded blob after the last", b => { var more = b.Clone(); more.Chunks.Add(b.Chunks[0].Clone()); return more; }),
            ("a digest that is no blob of the tree", b => With(b, 2, c => c.Digest = Google.Protobuf.ByteString.CopyFrom(new byte[32]))),
        };
        foreach (var (what, mangle) in hostile)
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, tree, new SyncScript
            {
                BatchChunks = 3,
                MangleBatch = (_, batch) => mangle(batch),
            }).WaitAsync(s_timeout));
            output.WriteLine($"{what}: {refused.Status.Detail}");
            Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
            // The valid chunks in front of the bad one were not written either: no blob of the batch reached staging.
            Assert.Empty(Directory.EnumerateFiles(staging, "*", SearchOption.AllDirectories));
            Assert.Equal(before, TreeAssert.Dump(dirs.Workspace));
            Assert.Equal("must survive", File.ReadAllText(Path.Combine(dirs.Outside, "victim.txt")));
        }

        // A tampered blob in a batch is still caught by its digest, and the tree stays the old one.
        var lying = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, tree, new SyncScript
        {
            BatchChunks = 3,
            Tamper = (_, content) => content.Select(b => (byte)(b ^ 0xFF)).ToArray(),
        }).WaitAsync(s_timeout));
        Assert.Equal(StatusCode.InvalidArgument, lying.StatusCode);
        Assert.Contains("digest mismatch", lying.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(before, TreeAssert.Dump(dirs.Workspace));

        await SyncTestClient.SyncAsync(agent.Client, tree, new SyncScript { BatchChunks = 3 }).WaitAsync(s_timeout);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);

        static BlobBatch With(BlobBatch batch, int index, Action<BlobChunk> change)
        {
            var copy = batch.Clone();
            change(copy.Chunks[index]);
            return copy;
        }
    }

    [Fact]
    public async Task DigestMismatchesAreRejectedAndLeaveTheTreeAlone()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Source, "a.txt", "first"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        var before = TreeAssert.Dump(dirs.Workspace);

        Write(dirs.Source, "b.txt", "second"u8.ToArray());
        var tree = LocalTree.Scan(dirs.Source);
        var lying = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, tree, new SyncScript
        {
            Tamper = (_, content) => content.Select(b => (byte)(b ^ 0xFF)).ToArray(),
        }).WaitAsync(s_timeout));
        output.WriteLine(lying.Status.Detail);
        Assert.Equal(StatusCode.InvalidArgument, lying.StatusCode);
        Assert.Contains("digest mismatch", lying.Status.Detail, StringComparison.Ordinal);

        var wrongManifest = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, tree, new SyncScript
        {
            BeginDigest = Google.Protobuf.ByteString.CopyFrom(new byte[32]),
        }).WaitAsync(s_timeout));
        output.WriteLine(wrongManifest.Status.Detail);
        Assert.Equal(StatusCode.InvalidArgument, wrongManifest.StatusCode);
        Assert.Contains("manifest digest mismatch", wrongManifest.Status.Detail, StringComparison.Ordinal);

        Assert.Equal(before, TreeAssert.Dump(dirs.Workspace));
        await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
    }

    [Fact]
    public async Task OversizeFilesTreesAndEntryCountsAreRefusedWithTheLimitAndFlag()
    {
        using var dirs = new SyncDirs();
        await using var agent = await SyncTestAgent.StartAsync(output, dirs,
            "--sync-max-file-bytes", "2048", "--sync-max-total-bytes", "4096", "--sync-max-entries", "5");

        var bigFile = FileTree("a/b.bin", new byte[3000]);
        var file = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, bigFile).WaitAsync(s_timeout));
        output.WriteLine(file.Status.Detail);
        Assert.Equal(StatusCode.ResourceExhausted, file.StatusCode);
        Assert.Equal("file a/b.bin is 2.9 KiB; this agent accepts at most 2 KiB per file (--sync-max-file-bytes).", file.Status.Detail);

        var total = new LocalTree();
        for (var i = 0; i < 3; i++)
        {
            total.Entries.Add(LocalTree.File(total, $"f{i}", Encoding.ASCII.GetBytes(new string((char)('a' + i), 2000))));
        }

        var totalEx = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, total).WaitAsync(s_timeout));
        output.WriteLine(totalEx.Status.Detail);
        Assert.Equal(StatusCode.ResourceExhausted, totalEx.StatusCode);
        Assert.Contains("--sync-max-total-bytes", totalEx.Status.Detail, StringComparison.Ordinal);

        // A client that under-reports in begin is caught while the manifest arrives.
        var underReported = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, total,
            new SyncScript { BeginTotalBytes = 10 }).WaitAsync(s_timeout));
        Assert.Equal(StatusCode.ResourceExhausted, underReported.StatusCode);
        Assert.Contains("--sync-max-total-bytes", underReported.Status.Detail, StringComparison.Ordinal);

        var many = LocalTree.Of([.. Enumerable.Range(0, 6).Select(i => LocalTree.Directory($"d{i}"))]);
        var entries = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, many).WaitAsync(s_timeout));
        output.WriteLine(entries.Status.Detail);
        Assert.Equal(StatusCode.ResourceExhausted, entries.StatusCode);
        Assert.Contains("at most 5 (--sync-max-entries)", entries.Status.Detail, StringComparison.Ordinal);
        var entriesLied = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, many,
            new SyncScript { BeginEntryCount = 1 }).WaitAsync(s_timeout));
        Assert.Equal(StatusCode.ResourceExhausted, entriesLied.StatusCode);

        Assert.Empty(Directory.EnumerateFileSystemEntries(dirs.Workspace));
    }

    [Fact]
    public async Task NamesDifferingOnlyInCaseAreRefusedOnACaseInsensitiveWorkspace()
    {
        using var dirs = new SyncDirs();
        await using var agent = await SyncTestAgent.StartAsync(output, dirs, "--sync-case", "insensitive");
        var files = new LocalTree();
        files.Entries.Add(LocalTree.File(files, "README", "upper"u8.ToArray()));
        files.Entries.Add(LocalTree.File(files, "readme", "lower"u8.ToArray()));
        var ex = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, files).WaitAsync(s_timeout));
        output.WriteLine(ex.Status.Detail);
        Assert.Equal(StatusCode.FailedPrecondition, ex.StatusCode);
        Assert.Contains("'README' and 'readme'", ex.Status.Detail, StringComparison.Ordinal);

        // Implied parent directories collide too.
        var dirsTree = new LocalTree();
        dirsTree.Entries.Add(LocalTree.File(dirsTree, "Src/a.txt", "a"u8.ToArray()));
        dirsTree.Entries.Add(LocalTree.File(dirsTree, "src/b.txt", "b"u8.ToArray()));
        var dirEx = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, dirsTree).WaitAsync(s_timeout));
        Assert.Equal(StatusCode.FailedPrecondition, dirEx.StatusCode);
        Assert.Contains("'Src' and 'src'", dirEx.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dirs.Workspace));
    }

    [Fact]
    public async Task TheSameNamesAreFineOnACaseSensitiveWorkspace()
    {
        using var dirs = new SyncDirs();
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        Write(dirs.Source, "README", "upper"u8.ToArray());
        Write(dirs.Source, "readme", "lower"u8.ToArray());
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
    }

    [Fact]
    public async Task AClientCancellingMidUploadLeavesTheOldTreeAndTheNextSyncWorks()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Source, "old.txt", "old"u8.ToArray());
        Write(dirs.Source, "gone-later.txt", "will be deleted"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        var oldTree = TreeAssert.Dump(dirs.Workspace);

        var big = new byte[1_000_000];
        new Random(7).NextBytes(big);
        Write(dirs.Source, "aaa-first.txt", "uploaded completely before the cancel"u8.ToArray());
        Write(dirs.Source, "new/big.bin", big);
        Write(dirs.Source, "old.txt", "changed"u8.ToArray());
        File.Delete(Path.Combine(dirs.Source, "gone-later.txt"));
        var tree = LocalTree.Scan(dirs.Source);
        var firstDigest = Convert.ToHexStringLower(tree.Entries.Single(e => e.Path == "aaa-first.txt").Digest.Span);
        await Assert.ThrowsAnyAsync<Exception>(() => SyncTestClient.SyncAsync(agent.Client, tree,
            new SyncScript
            {
                ChunkBytes = 64 * 1024,
                CancelAfterChunks = 3,
                // Cancel only once the agent has the first blob (a reset can overtake data still in flight).
                BeforeCancel = () => WaitUntil(() => File.Exists(Path.Combine(dirs.State, "staging", firstDigest[..2], firstDigest))),
            }).WaitAsync(s_timeout));

        // The agent notices the cancellation (log event 614) without touching the tree.
        await WaitUntil(() => agent.Logs.Count(614) >= 1);
        Assert.Equal(oldTree, TreeAssert.Dump(dirs.Workspace));
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(dirs.State, "staging"), "*.part", SearchOption.AllDirectories));

        // The blob that arrived completely before the cancel is kept in staging and not asked for again.
        var outcome = await SyncTestClient.SyncAsync(agent.Client, tree).WaitAsync(s_timeout);
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
        Assert.Equal(2ul, outcome.Done!.BlobsReceived);
        Assert.Equal(3ul, outcome.Done.FilesWritten);
    }

    [Fact]
    public async Task AnApplyInterruptedByACrashIsCompletedFromTheJournalWhenTheAgentStarts()
    {
        using var dirs = new SyncDirs();
        for (var i = 0; i < 10; i++)
        {
            Write(dirs.Source, $"old/{i}.txt", Encoding.ASCII.GetBytes($"old {i}"));
        }

        await using (var agent = await SyncTestAgent.StartAsync(output, dirs))
        {
            await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);

            Directory.Delete(Path.Combine(dirs.Source, "old"), recursive: true);
            for (var i = 0; i < 10; i++)
            {
                Write(dirs.Source, $"new/{i}.txt", Encoding.ASCII.GetBytes($"new {i}"));
            }

            File.CreateSymbolicLink(Path.Combine(dirs.Source, "link"), "new/0.txt");
            var changes = 0;
            agent.Synchronizer.Applier.BeforeChange = what =>
            {
                if (++changes > 4)
                {
                    throw new IOException($"simulated crash before '{what}'");
                }
            };
            var ex = await Assert.ThrowsAsync<RpcException>(() => SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout));
            output.WriteLine(ex.Status.Detail);
            Assert.Equal(StatusCode.Internal, ex.StatusCode);
            Assert.True(File.Exists(Path.Combine(dirs.State, "journal")));
            output.WriteLine("half-applied tree:\n" + TreeAssert.Dump(dirs.Workspace));
            Assert.NotEqual(TreeAssert.Dump(dirs.Source), TreeAssert.Dump(dirs.Workspace));
        }

        await using var restarted = await SyncTestAgent.StartAsync(output, dirs);
        Assert.Equal(1, restarted.Logs.Count(622));
        Assert.False(File.Exists(Path.Combine(dirs.State, "journal")));
        TreeAssert.Equal(dirs.Source, dirs.Workspace);
        var after = await SyncTestClient.SyncAsync(restarted.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
        Assert.True(after.Done!.UpToDate);
    }

    [Fact]
    public async Task ACrashAtAnyPointOfTheApplyIsCompletedByReplayingTheJournal()
    {
        using var dirs = new SyncDirs();
        var oldSource = Path.Combine(dirs.Root, "src-old");
        var newSource = Path.Combine(dirs.Root, "src-new");
        Write(oldSource, "stays.txt", "unchanged"u8.ToArray());
        Write(oldSource, "moves.bin", "content that moves"u8.ToArray());
        Write(oldSource, "dir-becomes-file/x.txt", "x"u8.ToArray());
        Write(oldSource, "file-becomes-dir", "f"u8.ToArray());
        Write(oldSource, "tool.sh", "#!/bin/sh\n"u8.ToArray(), executable: true);
        File.CreateSymbolicLink(Path.Combine(oldSource, "link"), "stays.txt");
        Directory.CreateDirectory(Path.Combine(oldSource, "empty-old"));

        Write(newSource, "stays.txt", "unchanged"u8.ToArray());
        Write(newSource, "moved/here.bin", "content that moves"u8.ToArray());
        Write(newSource, "moved/copy.bin", "content that moves"u8.ToArray());
        Write(newSource, "dir-becomes-file", "now a file"u8.ToArray());
        Write(newSource, "file-becomes-dir/inner.txt", "now inside a dir"u8.ToArray());
        Write(newSource, "tool.sh", "#!/bin/sh\n"u8.ToArray());
        Write(newSource, "dup1.txt", "duplicated upload"u8.ToArray());
        Write(newSource, "dup2.txt", "duplicated upload"u8.ToArray());
        Write(newSource, "empty", []);
        File.CreateSymbolicLink(Path.Combine(newSource, "link"), "moved/here.bin");
        Directory.CreateDirectory(Path.Combine(newSource, "empty-new"));
        var oldTree = LocalTree.Scan(oldSource);
        var newTree = LocalTree.Scan(newSource);

        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        var applier = agent.Synchronizer.Applier;
        for (var crashAfter = 0; ; crashAfter++)
        {
            Assert.True(crashAfter < 100, "the apply never finished without a crash");
            applier.BeforeChange = null;
            await SyncTestClient.SyncAsync(agent.Client, oldTree).WaitAsync(s_timeout);
            TreeAssert.Equal(oldSource, dirs.Workspace);

            var changes = 0;
            applier.BeforeChange = what =>
            {
                if (changes++ == crashAfter)
                {
                    throw new IOException($"simulated crash before '{what}'");
                }
            };
            try
            {
                await SyncTestClient.SyncAsync(agent.Client, newTree).WaitAsync(s_timeout);
                TestLog.Write(output, $"the apply takes {changes} changes; every crash point was replayed");
                TreeAssert.Equal(newSource, dirs.Workspace);
                break;
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Internal)
            {
                applier.BeforeChange = null;
                using (await agent.Synchronizer.AcquireAsync(CancellationToken.None))
                {
                    agent.Synchronizer.Recover();
                }

                Assert.False(File.Exists(Path.Combine(dirs.State, "journal")), $"crash after {crashAfter}: journal left");
                TreeAssert.Equal(newSource, dirs.Workspace);
            }
        }

        Assert.Equal(0, agent.Logs.Count(623)); // no replay ever gave up
    }

    [SkippableFact]
    public async Task StagingOnAnotherFilesystemStillPlacesFilesByRename()
    {
        Skip.IfNot(Directory.Exists("/dev/shm"), "no /dev/shm to put the state directory on another filesystem");
        using var dirs = new SyncDirs();
        var state = Path.Combine("/dev/shm", $"rbs-sync-state-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(state);
            var probe = Path.Combine(state, "probe");
            File.WriteAllBytes(probe, []);
            Skip.If(WorkspaceTree.TryRename(probe, Path.Combine(dirs.Workspace, "probe")),
                "/dev/shm is on the same filesystem as the temp directory");

            var big = new byte[150_000];
            new Random(3).NextBytes(big);
            Write(dirs.Source, "a/big.bin", big, executable: true);
            Write(dirs.Source, "b/same.bin", big);
            Write(dirs.Source, "small.txt", "small"u8.ToArray());
            await using var agent = await SyncTestAgent.StartAsync(output, dirs, "--sync-state-dir", state);
            var outcome = await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);

            TreeAssert.Equal(dirs.Source, dirs.Workspace);
            Assert.Equal(3ul, outcome.Done!.FilesWritten);
            Assert.Empty(Directory.EnumerateFiles(Path.Combine(state, "staging"), "*", SearchOption.AllDirectories));
            Assert.Empty(Directory.EnumerateFileSystemEntries(dirs.Workspace, ".rbs-sync-*", SearchOption.AllDirectories));
        }
        finally
        {
            Directory.Delete(state, recursive: true);
        }
    }

    [Fact]
    public async Task TwoConcurrentSyncsOfTheWorkspaceRunOneAfterTheOther()
    {
        using var dirs = new SyncDirs();
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        var treeA = new LocalTree();
        treeA.Entries.Add(LocalTree.File(treeA, "a.txt", "A"u8.ToArray()));
        var treeB = new LocalTree();
        treeB.Entries.Add(LocalTree.File(treeB, "b.txt", "B"u8.ToArray()));

        using var firstHasLock = new SemaphoreSlim(0);
        using var releaseFirst = new SemaphoreSlim(0);
        var first = SyncTestClient.SyncAsync(agent.Client, treeA, new SyncScript
        {
            OnNeedEnd = async () =>
            {
                firstHasLock.Release();
                await releaseFirst.WaitAsync(s_timeout);
            },
        });
        Assert.True(await firstHasLock.WaitAsync(s_timeout));

        var second = SyncTestClient.SyncAsync(agent.Client, treeB);
        await WaitUntil(() => agent.Logs.Count(620) >= 1); // "another sync is running; waiting"
        Assert.False(second.IsCompleted);
        releaseFirst.Release();

        var firstDone = await first.WaitAsync(s_timeout);
        var secondDone = await second.WaitAsync(s_timeout);
        Assert.False(firstDone.Done!.UpToDate);
        Assert.False(secondDone.Done!.UpToDate);
        Assert.Equal(["b.txt"], Directory.EnumerateFileSystemEntries(dirs.Workspace).Select(Path.GetFileName));
    }

    [Fact]
    public async Task TheStateDirectoryDefaultsToASiblingOfTheWorkspaceOrAFallbackWhenThatCannotBeCreated()
    {
        using var dirs = new SyncDirs();
        Write(dirs.Source, "a.txt", "a"u8.ToArray());
        string[] args = ["--agent-id", "sync-test-agent", "--workspace", dirs.Workspace, "--build-tool", FakeBazel.Path, "--listen", "127.0.0.1:0"];
        await using (var agent = await SyncTestAgent.StartRawAsync(output, args))
        {
            Assert.Equal(Path.Combine(dirs.Root, ".ws.rbs-sync"), agent.Synchronizer.Store.Directory);
            await SyncTestClient.SyncAsync(agent.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
            Assert.True(File.Exists(Path.Combine(dirs.Root, ".ws.rbs-sync", "index")));
        }

        // Something that is not a directory where the default would go (in a container: an unwritable parent).
        using var blocked = new SyncDirs();
        File.WriteAllText(Path.Combine(blocked.Root, ".ws.rbs-sync"), "not a directory");
        string[] blockedArgs = ["--agent-id", "sync-test-agent", "--workspace", blocked.Workspace, "--build-tool", FakeBazel.Path, "--listen", "127.0.0.1:0"];
        await using var fallback = await SyncTestAgent.StartRawAsync(output, blockedArgs);
        var state = fallback.Synchronizer.Store.Directory;
        try
        {
            output.WriteLine($"fallback state directory: {state}");
            Assert.Equal(1, fallback.Logs.Count(625));
            Assert.Contains(Path.Combine(".cache", "rbs", "sync", "ws-"), state, StringComparison.Ordinal);
            await SyncTestClient.SyncAsync(fallback.Client, LocalTree.Scan(dirs.Source)).WaitAsync(s_timeout);
            TreeAssert.Equal(dirs.Source, blocked.Workspace);
        }
        finally
        {
            Directory.Delete(state, recursive: true);
        }
    }

    private static LocalTree FileTree(string path, byte[] content)
    {
        var tree = new LocalTree();
        tree.Entries.Add(LocalTree.File(tree, path, content));
        return tree;
    }

    private static LocalTree Sorted(params ManifestEntry[] entries)
    {
        var tree = LocalTree.Of(entries);
        tree.Sort();
        return tree;
    }

    private static void Write(string root, string path, byte[] content, bool executable = false)
    {
        var full = Path.Combine(root, path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        File.WriteAllBytes(full, content);
        WorkspaceTree.SetMode(full, executable ? WorkspaceTree.ExecutableMode : WorkspaceTree.RegularMode);
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        using var cts = new CancellationTokenSource(s_timeout);
        while (!condition())
        {
            await Task.Delay(20, cts.Token);
        }
    }
}
