using System.Text;
using Rbs.Tests.Agent.Outputs;

namespace Rbs.Tests.JBazel.Outputs;

/// <summary>
/// The real jbazel executable with <c>--rbs_fetch_outputs</c>: a fake orchestrator (FakeRemote) hands out a real agent
/// whose build tool writes a BEP file (Tests/Agent/Outputs/Assets/outputs-bazel.sh).
/// </summary>
public sealed class JBazelFetchOutputsTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    private readonly TempWorkspace _workspace = new();
    private FakeRemote _remote = null!;
    private OutputsAgent _agent = null!;

    public async Task InitializeAsync()
    {
        _remote = await FakeRemote.StartAsync(output);
        _agent = await OutputsAgent.StartAsync(output);
        _remote.GetServer = (_, _) =>
        {
            var response = _remote.DirectResponse();
            response.Address = _agent.Agent.Address;
            return Task.FromResult(response);
        };
    }

    public async Task DisposeAsync()
    {
        await _agent.DisposeAsync();
        await _remote.DisposeAsync();
    }

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public async Task ABuildLandsItsOutputsInJBazelOutAndReportsThem()
    {
        var hello = Encoding.UTF8.GetBytes("hello from the agent\n");
        _agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/hello.txt", hello);
        _agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/tool.sh", Encoding.UTF8.GetBytes("#!/bin/sh\n"), executable: true);

        await using (var jbazel = Start("--rbs_fetch_outputs", "--rbs_status=always", "build", "//app:all"))
        {
            Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));
            Assert.Matches(@"(?m)^rbs: outputs: 2 files in jbazel-out/ \(2 changed, 31 B fetched\) in \d+ ms$", jbazel.StderrText);
        }

        var landed = Path.Combine(_workspace.Root, "jbazel-out", "k8-fastbuild", "bin", "app", "hello.txt");
        Assert.Equal(hello, File.ReadAllBytes(landed));
        if (!OperatingSystem.IsWindows())
        {
            Assert.True((File.GetUnixFileMode(Path.Combine(_workspace.Root, "jbazel-out/k8-fastbuild/bin/app/tool.sh")) & UnixFileMode.UserExecute) != 0);
        }

        // Environment spelling, unchanged outputs: nothing travels.
        await using (var again = Start(["--rbs_status=always", "build", "//app:all"], new() { ["RBS_FETCH_OUTPUTS"] = "1" }))
        {
            Assert.Equal(0, await again.WaitForExitAsync(s_timeout));
            Assert.Contains("rbs: outputs: 2 files in jbazel-out/ (0 changed, 0 B fetched)", again.StderrText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task NonBuildCommandsAndBuildsWithoutTheFlagDoNotCollect()
    {
        _agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", [1]);

        await using (var query = Start("--rbs_fetch_outputs", "query", "//..."))
        {
            Assert.Equal(0, await query.WaitForExitAsync(s_timeout));
        }

        Assert.Equal(["query", "//..."], _agent.LastArgs());

        await using (var build = Start("build", "//..."))
        {
            Assert.Equal(0, await build.WaitForExitAsync(s_timeout));
        }

        Assert.Equal(["build", "//..."], _agent.LastArgs());
        Assert.False(Directory.Exists(Path.Combine(_workspace.Root, "jbazel-out")));
    }

    [Fact]
    public async Task AFailedFetchAfterASuccessfulBuildIsOneLineAndARemoteExitCode()
    {
        _agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", [1]);
        var mine = Path.Combine(_workspace.Base, "mine.json");

        await using var jbazel = Start("--rbs_fetch_outputs", "build", "//...", $"--build_event_json_file={mine}");

        Assert.Equal(34, await jbazel.WaitForExitAsync(s_timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("rbs: the build succeeded, but fetching its outputs from agent", line, StringComparison.Ordinal);
        Assert.Contains("sets its own --build_event_json_file", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AFailedBuildKeepsItsExitCodeAndFetchesNothing()
    {
        _agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", [1]);
        File.WriteAllText(Path.Combine(_agent.Agent.Workspace, "exit-code"), "1");

        await using var jbazel = Start("--rbs_fetch_outputs", "build", "//...");

        Assert.Equal(1, await jbazel.WaitForExitAsync(s_timeout));
        Assert.DoesNotContain("rbs:", jbazel.StderrText, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(_workspace.Root, "jbazel-out")));
    }

    private JBazelProcess Start(params string[] args) => Start(args, []);

    private JBazelProcess Start(string[] args, Dictionary<string, string?> environment)
    {
        var env = new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString() };
        foreach (var (name, value) in environment)
        {
            env[name] = value;
        }

        var process = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, env, args);
        process.StandardInput.Close();
        return process;
    }
}
