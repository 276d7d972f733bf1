using Rbs.JBazel.Workspace;
using Rbs.Tests.Agent;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.Tests.Orchestrator.Infrastructure;

namespace Rbs.Tests.Stacks.Sync;

/// <summary>
/// The real jbazel binary with <c>--rbs_sync</c> against a real local stack: an in-process orchestrator in local
/// mode spawning the real rbs-agent (fake-bazel.sh as its build tool), which builds a synced copy of the tree.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class JBazelSyncStackTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly OrchestratorTestContext _context = new(output);
    private readonly TempWorkspace _workspace = new();
    private TestOrchestrator _orchestrator = null!;

    private string CacheHome => Path.Combine(_workspace.Base, "xdg-cache");

    public async Task InitializeAsync()
    {
        await _context.InitializeAsync();
        _orchestrator = await _context.StartOrchestratorAsync(
            Path.Combine(AppContext.BaseDirectory, "rbs-agent"),
            extraArgs: ["--build-tool", FakeBazel.Path, "--workspaces-path", Path.Combine(_context.Root, "synced")]);
    }

    public Task DisposeAsync() => _context.DisposeAsync();

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public async Task AnUncommittedEditIsBuiltRemotelyIgnoredFilesStayBehindWhenAskedAndANoOpSyncIsUpToDate()
    {
        Write("src/hello.txt", "v1\n");
        Write(".gitignore", "*.env\n");
        Write("secret.env", "TOKEN=never-leaves-the-laptop\n");
        Write("tools/run.sh", "#!/bin/sh\n");
        File.SetUnixFileMode(Path.Combine(_workspace.Root, "tools/run.sh"), (UnixFileMode)0b111_101_101);

        // The agent builds in its own copy, not in this directory.
        var (code, stdout, stderr) = await RunAsync("echo-args");
        Assert.Equal(0, code);
        var agentCwd = stdout.Split('\0')[0];
        Assert.NotEqual(RepoHash.RealPath(_workspace.Root), agentCwd);
        Assert.StartsWith(Path.Combine(_context.Root, "synced"), agentCwd, StringComparison.Ordinal);
        Assert.Matches(@"(?m)^rbs: synced \d+ entries \(3 files uploaded, \d+ B\) in \d+ ms$", stderr);
        Assert.Equal("v1\n", File.ReadAllText(Path.Combine(agentCwd, "src/hello.txt")));
        Assert.False(File.Exists(Path.Combine(agentCwd, "secret.env")));
        Assert.NotEqual((UnixFileMode)0, File.GetUnixFileMode(Path.Combine(agentCwd, "tools/run.sh")) & UnixFileMode.UserExecute);

        // An uncommitted edit: exactly that file goes up, and the remote tool reads it.
        Write("src/hello.txt", "v2, edited\n");
        (code, stdout, stderr) = await RunAsync("two-files", "src/hello.txt", "/dev/null");
        Assert.Equal(0, code);
        Assert.Equal("v2, edited\n", stdout);
        Assert.Matches(@"(?m)^rbs: synced \d+ entries \(1 file uploaded, 11 B\) in \d+ ms$", stderr);

        // Nothing changed: one round trip, no upload.
        (code, _, stderr) = await RunAsync("exit", "0");
        Assert.Equal(0, code);
        Assert.Matches(@"(?m)^rbs: workspace up to date \(\d+ entries\) in \d+ ms$", stderr);
        Assert.Single(Directory.GetFiles(Path.Combine(CacheHome, "jbazel", "sync"), "*.cache"));

        // The ignored file is not there for the remote tool either.
        (code, _, _) = await RunAsync("two-files", "secret.env", "/dev/null");
        Assert.NotEqual(0, code);
    }

    [Fact]
    public async Task AWarmCommandOnAnUnchangedTreeMakesNoSyncCallAndAnEditOnTheAgentIsSyncedAwayBeforeItRuns()
    {
        Write("src/hello.txt", "v1\n");
        var (code, stdout, stderr) = await RunAsync("echo-args");
        Assert.Equal(0, code);
        var agentCwd = stdout.Split('\0')[0];
        Assert.Matches(@"(?m)^rbs: synced \d+ entries \(1 file uploaded, 3 B\) in \d+ ms$", stderr);
        var agentLog = Assert.Single(Directory.GetFiles(_context.AgentsDirectory, "*.log"));
        await TestWait.EventuallyAsync(() => SyncCalls(agentLog) == 1, "the agent logged the first sync");

        // Unchanged since the last sync: the start names the tree, and the agent checks it; no Sync call.
        (code, stdout, stderr) = await RunAsync("two-files", "src/hello.txt", "/dev/null");
        Assert.Equal(0, code);
        Assert.Equal("v1\n", stdout);
        Assert.Matches(@"(?m)^rbs: workspace up to date \(\d+ entries\) in \d+ ms$", stderr);
        Assert.DoesNotContain("rbs: synced", stderr, StringComparison.Ordinal);

        // The agent's copy changed behind jbazel's back (a program run there wrote into its workspace): the agent refuses
        // the start before running anything, jbazel syncs, and the same command then reads the laptop's file.
        File.WriteAllText(Path.Combine(agentCwd, "src/hello.txt"), "edited on the agent\n");
        (code, stdout, stderr) = await RunAsync("two-files", "src/hello.txt", "/dev/null");
        Assert.Equal(0, code);
        Assert.Equal("v1\n", stdout);
        Assert.Matches(@"(?m)^rbs: the agent's copy of the workspace is not the tree last synced to it \(the workspace was changed on the agent since its last sync\); syncing$", stderr);
        Assert.Matches(@"(?m)^rbs: synced \d+ entries \(1 file uploaded, 3 B\) in \d+ ms$", stderr);
        Assert.Equal("v1\n", File.ReadAllText(Path.Combine(agentCwd, "src/hello.txt")));

        // Two Sync calls in all: the first command's and the resync; the warm command made none.
        await TestWait.EventuallyAsync(() => SyncCalls(agentLog) == 2, "the agent logged the resync");
        Assert.Equal(2, SyncCalls(agentLog));
    }

    [Fact]
    public async Task AnAgentRefusingTheTreeIsExit34WithItsReasonOnOneLine()
    {
        Write("src/hello.txt", "v1\n");
        Write("src/back\\slash.txt", "a name the agent refuses");
        await using var refused = Start(["exit", "0"]);
        var code = await refused.WaitForExitAsync(s_timeout);
        Assert.Equal(34, code);
        var line = Assert.Single(refused.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("rbs: workspace sync", StringComparison.Ordinal));
        Assert.Contains("(InvalidArgument)", line, StringComparison.Ordinal);
        Assert.Contains("back\\slash.txt", line, StringComparison.Ordinal);

        // The command never ran on a half-synced tree: the rejected sync changed nothing there.
        var synced = Path.Combine(_context.Root, "synced");
        Assert.True(Directory.Exists(synced));
        Assert.Empty(Directory.EnumerateFiles(synced, "hello.txt", SearchOption.AllDirectories));
    }

    /// <summary>Sync calls the agent's log shows (its "Sync from ... started" line, one per call).</summary>
    private static int SyncCalls(string agentLog)
    {
        using var reader = new StreamReader(new FileStream(agentLog, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete));
        return reader.ReadToEnd().Split('\n').Count(line => line.Contains("Sync from ", StringComparison.Ordinal) && line.Contains(" started: ", StringComparison.Ordinal));
    }

    private void Write(string relative, string content)
    {
        var path = Path.Combine(_workspace.Root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, content);
    }

    private async Task<(int Code, string Stdout, string Stderr)> RunAsync(params string[] toolArgs)
    {
        await using var jbazel = Start(toolArgs);
        var code = await jbazel.WaitForExitAsync(s_timeout);
        TestLog.Write(output, $"exit {code}; stderr: {jbazel.StderrText}");
        return (code, jbazel.StdoutText, jbazel.StderrText);
    }

    private JBazelProcess Start(IEnumerable<string> toolArgs) =>
        JBazelProcess.Start(
            output,
            _workspace.Root,
            _workspace.Home,
            new Dictionary<string, string?> { ["XDG_CACHE_HOME"] = CacheHome },
            // --rbs_sync_gitignore: leaving git-ignored files behind is opt-in (bazel's glob() reads them).
            ["--rbs_orchestrator", _orchestrator.Address, "--rbs_sync", "--rbs_sync_gitignore", "--rbs_status=always", .. toolArgs]);
}
