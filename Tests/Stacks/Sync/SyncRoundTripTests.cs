using Grpc.Core;
using Rbs.JBazel;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Sync;
using Rbs.Tests.Agent.Sync;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Sync;

/// <summary>jbazel's sync client against a real agent (AgentHost on 127.0.0.1:0): the agent's tree ends up exactly the client's.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class SyncRoundTripTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task ATreeRoundTripsByteExactlyAndTheSecondSyncIsUpToDate()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("MODULE.bazel", "module(name = \"x\")\n"u8.ToArray());
        source.Write("bin/random.bin", RandomBytes(2 * 1024 * 1024 + 12345, seed: 1)); // three chunks
        source.Write("bin/zeros.bin", new byte[70_000]);
        source.Write("bin/empty", []);
        source.Write("tools/build.sh", "#!/bin/sh\necho hi\n"u8.ToArray(), executable: true);
        source.Write("données/été ☀.txt", "unicode\n"u8.ToArray());
        source.Write("emoji/\U0001F600.md", "smile"u8.ToArray());
        source.Write("dup/a.txt", "same content"u8.ToArray());
        source.Write("dup/b.txt", "same content"u8.ToArray());
        source.Link("links/to-file", "../tools/build.sh");
        source.Link("links/to-dir", "../bin");
        source.Link("links/dangling", "nowhere");
        source.Mkdir("empty/nested");
        source.Write(".gitignore", "*.log\n/scratch/\n"u8.ToArray());
        source.Write("build.log", "ignored"u8.ToArray());
        source.Write("scratch/notes", "ignored"u8.ToArray());
        source.Write(".git/HEAD", "ref: refs/heads/main\n"u8.ToArray());

        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        // Git-ignored files stay behind only when asked (--rbs_sync_gitignore); .git itself goes (git never ignores it).
        var gitignore = new WalkOptions([], UseGitignore: true);
        var first = await SyncAsync(agent, dirs, gitignore);
        Assert.False(first.UpToDate);
        Assert.Equal(9, first.BlobsUploaded); // distinct non-empty contents; the duplicate is sent once
        TestLog.Write(output, first.StatusLine);

        AssertAgentHasClientTree(dirs, exclude: ["build.log", "scratch", "scratch/notes"]);
        Assert.False(File.Exists(Path.Combine(dirs.Workspace, "build.log")));
        Assert.Equal("ref: refs/heads/main\n", File.ReadAllText(Path.Combine(dirs.Workspace, ".git", "HEAD")));
        Assert.Equal("../bin", new FileInfo(Path.Combine(dirs.Workspace, "links/to-dir")).LinkTarget);
        Assert.True(Directory.Exists(Path.Combine(dirs.Workspace, "empty/nested")));

        var second = await SyncAsync(agent, dirs, gitignore);
        Assert.True(second.UpToDate);
        Assert.Equal(0, second.BlobsUploaded);
        Assert.Matches(@"^rbs: workspace up to date \(\d+ entries\) in \d+ ms$", second.StatusLine);
    }

    [Fact]
    public async Task RenamesUploadNothingDeletionsAndEditsAreApplied()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("big/one.bin", RandomBytes(300_000, seed: 2));
        source.Write("big/two.bin", RandomBytes(300_000, seed: 3));
        source.Write("keep.txt", "v1"u8.ToArray());
        source.Write("gone.txt", "bye"u8.ToArray());
        source.Write("mode.sh", "echo"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncAsync(agent, dirs);

        File.Move(source.Full("big/one.bin"), source.Full("moved/renamed.bin").EnsureParent());
        File.Delete(source.Full("gone.txt"));
        File.SetUnixFileMode(source.Full("mode.sh"), File.GetUnixFileMode(source.Full("mode.sh")) | UnixFileMode.UserExecute);
        var renamed = await SyncAsync(agent, dirs);
        Assert.False(renamed.UpToDate);
        Assert.Equal(0, renamed.BlobsUploaded);
        AssertAgentHasClientTree(dirs);

        source.Write("keep.txt", "v2, longer"u8.ToArray());
        var edited = await SyncAsync(agent, dirs);
        Assert.Equal(1, edited.BlobsUploaded);
        Assert.Equal(10, edited.BytesUploaded);
        Assert.Matches(@"^rbs: synced \d+ entries \(1 file uploaded, 10 B\) in \d+ ms$", edited.StatusLine);
        AssertAgentHasClientTree(dirs);
    }

    [Fact]
    public async Task ExcludedPathsNeverReachTheAgentAndDisappearFromItButBazelIgnoredOnesStay()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("src/main.c", "int main;"u8.ToArray());
        source.Write("data/huge.bin", RandomBytes(1000, seed: 4));
        source.Write("node_modules/pkg/index.js", "x"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncAsync(agent, dirs);
        Assert.True(File.Exists(Path.Combine(dirs.Workspace, "data/huge.bin")));

        // Excluded later: the agent's copy loses them (bazel there must see what the client's sync shows). A
        // .bazelignore'd directory stays: bazel skips it for package discovery only and may still read it.
        source.Write(".bazelignore", "node_modules\n"u8.ToArray());
        await SyncAsync(agent, dirs, new WalkOptions(["/data/"], UseGitignore: true));
        Assert.False(Directory.Exists(Path.Combine(dirs.Workspace, "data")));
        Assert.True(File.Exists(Path.Combine(dirs.Workspace, "node_modules/pkg/index.js")));
        Assert.True(File.Exists(Path.Combine(dirs.Workspace, "src/main.c")));
    }

    [Fact]
    public async Task AFileChangingDuringTheUploadRestartsTheSyncOnce()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("stable.txt", "stable"u8.ToArray());
        source.Write("hot.txt", "first version"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);

        var builds = 0;
        var client = NewClient(agent, dirs, WalkOptions.Default, manifestHook: () =>
        {
            // Changed after it was digested, before it is uploaded.
            if (++builds == 1)
            {
                source.Write("hot.txt", "second version"u8.ToArray());
            }
        });
        var report = await client.SyncAsync(CancellationToken.None).WaitAsync(s_timeout);
        Assert.Equal(2, report.Attempts);
        Assert.Equal("second version", File.ReadAllText(Path.Combine(dirs.Workspace, "hot.txt")));
        AssertAgentHasClientTree(dirs);
    }

    [Fact]
    public async Task AFileThatKeepsChangingFailsClearlyAndTheAgentKeepsItsOldTree()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("hot.txt", "v0"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncAsync(agent, dirs);

        source.Write("other.txt", "new file"u8.ToArray());
        source.Write("hot.txt", "changed before the sync"u8.ToArray());
        var version = 0;
        var client = NewClient(agent, dirs, WalkOptions.Default, manifestHook: () => source.Write("hot.txt", System.Text.Encoding.UTF8.GetBytes($"version {++version}")));
        var failure = await Assert.ThrowsAsync<RemoteFailure>(() => client.SyncAsync(CancellationToken.None).WaitAsync(s_timeout));
        TestLog.Write(output, failure.Message);
        Assert.Equal(ExitCodes.TransientRemoteError, failure.ExitCode);
        Assert.Contains("hot.txt changed", failure.Message, StringComparison.Ordinal);
        Assert.Contains("--rbs_sync_exclude=/hot.txt", failure.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', failure.Message);
        Assert.Equal("v0", File.ReadAllText(Path.Combine(dirs.Workspace, "hot.txt")));
        Assert.False(File.Exists(Path.Combine(dirs.Workspace, "other.txt")));
    }

    [Fact]
    public async Task AnAgentRefusingTheTreeIsExit34WithItsReasonOnOneLine()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("small.txt", "ok"u8.ToArray());
        source.Write("large.bin", RandomBytes(5000, seed: 5));
        await using var agent = await SyncTestAgent.StartAsync(output, dirs, "--sync-max-file-bytes", "1000");

        var failure = await Assert.ThrowsAsync<RemoteFailure>(() => SyncAsync(agent, dirs));
        TestLog.Write(output, failure.Message);
        Assert.Equal(ExitCodes.RemoteEnvironmentError, failure.ExitCode);
        Assert.StartsWith("workspace sync to agent sync-test-agent at ", failure.Message, StringComparison.Ordinal);
        Assert.Contains("(ResourceExhausted)", failure.Message, StringComparison.Ordinal);
        Assert.Contains("large.bin", failure.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', failure.Message);
        Assert.False(File.Exists(Path.Combine(dirs.Workspace, "small.txt")));
    }

    [Fact]
    public async Task SyncCallsAProxyFailsAreSentAgainSilently()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("a.txt", "through a restarting ingress"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);

        // A load balancer whose upstream replica is restarting: plain 502/503 in place of the first two calls.
        var proxy = new FailingProxyHandler([502, 503]);
        var warnings = new List<string>();
        var report = await NewClient(agent, dirs, WalkOptions.Default, channel: ProxiedChannel(agent, proxy), warn: warnings.Add)
            .SyncAsync(CancellationToken.None).WaitAsync(s_timeout);
        Assert.False(report.UpToDate);
        Assert.Equal(2, proxy.Failed);
        Assert.Empty(warnings);
        AssertAgentHasClientTree(dirs);
    }

    [Fact]
    public async Task ASyncAProxyKeepsFailingIsExit38AfterABoundedNumberOfCalls()
    {
        using var dirs = new SyncDirs();
        new ClientTree(dirs.Source).Write("a.txt", "x"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);

        var proxy = new FailingProxyHandler([.. Enumerable.Repeat(502, 20)]);
        var failure = await Assert.ThrowsAsync<RemoteFailure>(() =>
            NewClient(agent, dirs, WalkOptions.Default, channel: ProxiedChannel(agent, proxy)).SyncAsync(CancellationToken.None).WaitAsync(s_timeout));
        TestLog.Write(output, failure.Message);
        Assert.Equal(ExitCodes.TransientRemoteError, failure.ExitCode);
        Assert.Contains("HTTP status code: 502", failure.Message, StringComparison.Ordinal);
        Assert.Equal(WorkspaceSyncClient.MaxTransientAttempts, proxy.Failed);
        Assert.False(File.Exists(Path.Combine(dirs.Workspace, "a.txt")));
    }

    [Fact]
    public async Task CancellingMidSyncLeavesTheOldTree()
    {
        using var dirs = new SyncDirs();
        var source = new ClientTree(dirs.Source);
        source.Write("a.txt", "old"u8.ToArray());
        await using var agent = await SyncTestAgent.StartAsync(output, dirs);
        await SyncAsync(agent, dirs);

        source.Write("a.txt", "new"u8.ToArray());
        source.Write("big.bin", RandomBytes(24 * 1024 * 1024, seed: 6));
        using var cts = new CancellationTokenSource();
        var client = NewClient(agent, dirs, WalkOptions.Default, manifestHook: () => cts.CancelAfter(TimeSpan.FromMilliseconds(20)));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.SyncAsync(cts.Token).WaitAsync(s_timeout));
        Assert.Equal("old", File.ReadAllText(Path.Combine(dirs.Workspace, "a.txt")));

        // No waiting for the agent's cleanup of the cancelled call: it deletes its partial uploads before it releases
        // the workspace lock, so the next sync cannot see them.
        var after = await SyncAsync(agent, dirs);
        Assert.False(after.UpToDate);
        AssertAgentHasClientTree(dirs);
    }

    private async Task<SyncReport> SyncAsync(SyncTestAgent agent, SyncDirs dirs, WalkOptions? options = null) =>
        await NewClient(agent, dirs, options ?? WalkOptions.Default).SyncAsync(CancellationToken.None).WaitAsync(s_timeout);

    private static Grpc.Net.Client.GrpcChannel ProxiedChannel(SyncTestAgent agent, HttpMessageHandler proxy) =>
        Grpc.Net.Client.GrpcChannel.ForAddress("http://" + agent.Channel.Target, new Grpc.Net.Client.GrpcChannelOptions { HttpHandler = proxy, DisposeHttpClient = true });

    private WorkspaceSyncClient NewClient(
        SyncTestAgent agent,
        SyncDirs dirs,
        WalkOptions options,
        Action? manifestHook = null,
        Grpc.Net.Client.GrpcChannel? channel = null,
        Action<string>? warn = null)
    {
        var builder = new ClientManifestBuilder(dirs.Source, options, Path.Combine(dirs.Root, "client-cache", "c.cache"), TimeProvider.System);
        return new WorkspaceSyncClient(
            channel is null ? agent.Client : new WorkspaceSync.WorkspaceSyncClient(channel),
            new Metadata(),
            ct =>
            {
                var manifest = builder.Build(ct);
                manifestHook?.Invoke();
                return manifest;
            },
            $"agent sync-test-agent at {agent.Channel.Target}",
            line =>
            {
                TestLog.Write(output, line);
                warn?.Invoke(line);
            });
    }

    /// <summary>What a load balancer answers while its upstream is down: the given HTTP statuses, then the real calls.</summary>
    private sealed class FailingProxyHandler(int[] statuses) : DelegatingHandler(new SocketsHttpHandler())
    {
        private int _calls;

        public int Failed => Math.Min(Volatile.Read(ref _calls), statuses.Length);

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var call = Interlocked.Increment(ref _calls) - 1;
            return call < statuses.Length
                ? Task.FromResult(new HttpResponseMessage((System.Net.HttpStatusCode)statuses[call]) { Version = request.Version, Content = new StringContent("upstream down") })
                : base.SendAsync(request, cancellationToken);
        }
    }

    /// <summary>The agent's workspace equals the client's tree minus <paramref name="exclude"/> (bytes, exec bits, symlinks, empty dirs).</summary>
    private static void AssertAgentHasClientTree(SyncDirs dirs, string[]? exclude = null)
    {
        var expected = TreeAssert.Describe(dirs.Source);
        foreach (var path in exclude ?? [])
        {
            expected.Remove(path);
        }

        var actual = TreeAssert.Describe(dirs.Workspace);
        Assert.Equal(expected, actual);
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}

/// <summary>Writes the client's tree (files get an old mtime, so the digest cache trusts them).</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
internal sealed class ClientTree(string root)
{
    public string Full(string relative) => Path.Combine(root, relative);

    public void Write(string relative, byte[] content, bool executable = false)
    {
        var path = Full(relative).EnsureParent();
        File.WriteAllBytes(path, content);
        var mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        File.SetUnixFileMode(path, executable ? mode | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute : mode);
    }

    public void Link(string relative, string target) => File.CreateSymbolicLink(Full(relative).EnsureParent(), target);

    public void Mkdir(string relative) => Directory.CreateDirectory(Full(relative));
}

internal static class PathExtensions
{
    public static string EnsureParent(this string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        return path;
    }
}
