using System.Text;
using System.Text.RegularExpressions;
using Rbs.Tests.Agent;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.Tests.Shared.Hosting;

namespace Rbs.Tests.Stacks.Reattach;

/// <summary>
/// Reattach end to end (docs/reattach.md): the real jbazel and a real agent, with a TCP proxy between them that the
/// test cuts. GetServer comes from a fake orchestrator that names the proxy as the agent's address (direct mode).
/// </summary>
public sealed class ReattachStackTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly TempWorkspace _workspace = new();
    private readonly DirectoryInfo _files = Directory.CreateTempSubdirectory("rbs-reattach-stack-");
    private readonly DirectoryInfo _spill = Directory.CreateTempSubdirectory("rbs-reattach-spill-");
    private FakeRemote _remote = null!;

    public async Task InitializeAsync() => _remote = await FakeRemote.StartAsync(output);

    public async Task DisposeAsync() => await _remote.DisposeAsync();

    public void Dispose()
    {
        _workspace.Dispose();
        _files.Delete(recursive: true);
        _spill.Delete(recursive: true);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ACommandSurvivesTwoCutsWithEveryByteOnceAndInOrder(bool spill)
    {
        string[] memory = spill ? ["--reattach-memory-bytes", "65536"] : [];
        await using var agent = await TestAgent.StartAsync(output, [.. memory, "--reattach-spill-dir", _spill.FullName]);
        await using var proxy = new CuttableTcpProxy(agent.Address);
        Route(proxy);

        var stdout = new List<byte[]>();
        var stderr = new List<byte[]>();
        for (var k = 1; k <= 3; k++)
        {
            stdout.Add(ReattachTests.RandomBytes(2 * 1024 * 1024, k));
            // Text, so the test can take jbazel's own `rbs:` lines out of stderr again wherever they fell.
            stderr.Add(Encoding.ASCII.GetBytes(Convert.ToBase64String(ReattachTests.RandomBytes(1024 * 1024, 10 + k), Base64FormattingOptions.InsertLineBreaks)));
            File.WriteAllBytes(Stage($"out{k}"), stdout[^1]);
            File.WriteAllBytes(Stage($"err{k}"), stderr[^1]);
        }

        File.WriteAllText(Stage("go1"), "");
        await using var jbazel = StartJBazel(["staged", _files.FullName]);
        await TestWait.EventuallyAsync(() => File.Exists(Stage("done1")) && jbazel.Stdout.Length == stdout[0].Length, "part 1 arrived", s_timeout);

        // Cut 1, and the network stays down while the tool writes part 2: the agent keeps reading it (into its
        // journal, and with a small memory bound into its spill file).
        proxy.Refuse();
        Assert.True(proxy.CutAll() > 0);
        File.WriteAllText(Stage("go2"), "");
        await TestWait.EventuallyAsync(() => File.Exists(Stage("done2")), "the tool wrote part 2 while jbazel was cut off", s_timeout);
        if (spill)
        {
            await TestWait.EventuallyAsync(() => Directory.GetFiles(_spill.FullName, "*", SearchOption.AllDirectories).Any(f => new FileInfo(f).Length > 0), "output spilled to disk");
        }

        proxy.Accept();
        await TestWait.EventuallyAsync(() => ReattachLines(jbazel).Count == 1 && jbazel.Stdout.Length == stdout[0].Length + stdout[1].Length, "reattached, part 2 arrived", s_timeout);

        // Cut 2, once part 3 streams; the tool holds its exit until jbazel has reattached (part 3's 2 MiB alone may
        // arrive whole before a cut can land, and then nothing would be left to reattach to).
        File.WriteAllText(Stage("hold"), "");
        File.WriteAllText(Stage("go3"), "");
        await TestWait.EventuallyAsync(() => jbazel.Stdout.Length > stdout[0].Length + stdout[1].Length, "part 3 streams", s_timeout);
        Assert.True(proxy.CutAll() > 0);
        await TestWait.EventuallyAsync(() => ReattachLines(jbazel).Count == 2, "reattached after the second cut", s_timeout);
        File.Delete(Stage("hold"));

        Assert.Equal(3, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal(stdout.SelectMany(b => b).ToArray(), jbazel.Stdout);
        var lines = ReattachLines(jbazel);
        Assert.Equal(2, lines.Count);
        var stderrText = Encoding.ASCII.GetString(jbazel.Stderr);
        foreach (var line in lines)
        {
            stderrText = stderrText.Replace(line, "", StringComparison.Ordinal);
        }

        Assert.Equal(Encoding.ASCII.GetString(stderr.SelectMany(b => b).ToArray()), stderrText);
        await TestWait.EventuallyAsync(() => Directory.GetFiles(_spill.FullName, "*", SearchOption.AllDirectories).Length == 0, "no spill file is left");
    }

    [Fact]
    public async Task ThroughTheGatewayACommandSurvivesAGatewayRestartAndFinishes()
    {
        // Real gateway, orchestrator and agent processes in tunnel mode; the gateway is replaced mid-command by another
        // process on the same addresses, as a replica behind a load balancer would take over.
        await using var stack = await LocalStack.StartAsync(output);
        var stdout = new List<byte[]>();
        for (var k = 1; k <= 3; k++)
        {
            stdout.Add(ReattachTests.RandomBytes(512 * 1024, 20 + k));
            File.WriteAllBytes(Stage($"out{k}"), stdout[^1]);
            File.WriteAllText(Stage($"err{k}"), $"stderr part {k}\n");
        }

        File.WriteAllText(Stage("go1"), "");
        await using var jbazel = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={stack.PublicAddress}", "--rbs_connect=tunnel", "staged", _files.FullName]);
        jbazel.StandardInput.Close();
        await TestWait.EventuallyAsync(() => File.Exists(Stage("done1")) && jbazel.Stdout.Length == stdout[0].Length, "part 1 arrived", s_timeout);

        await stack.RestartGatewayAsync();
        File.WriteAllText(Stage("go2"), "");
        File.WriteAllText(Stage("go3"), "");

        Assert.Equal(3, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal(stdout.SelectMany(b => b).ToArray(), jbazel.Stdout);
        var line = Assert.Single(ReattachLines(jbazel));
        Assert.Contains("through the gateway at " + stack.PublicAddress, line, StringComparison.Ordinal);
        Assert.Equal("stderr part 1\nstderr part 2\nstderr part 3\n", jbazel.StderrText.Replace(line, "", StringComparison.Ordinal));
    }

    [Fact]
    public async Task AfterTheGraceTimeJBazelExits38AndTheAgentStopsTheTool()
    {
        await using var agent = await TestAgent.StartAsync(output, "--reattach-grace", "00:00:02");
        await using var proxy = new CuttableTcpProxy(agent.Address);
        Route(proxy);
        await using var jbazel = StartJBazel(["trap-int"]);
        await jbazel.WaitForStdoutAsync("ready grandchild=", s_timeout);
        var grandchild = GrandchildPid(jbazel);

        proxy.Refuse();
        proxy.CutAll();

        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains("could not reattach to invocation", jbazel.StderrText, StringComparison.Ordinal);
        Assert.Contains("grace time of 2 s", jbazel.StderrText, StringComparison.Ordinal);
        Assert.Single(jbazel.StderrText.Split('\n'), line => line.StartsWith("rbs: ", StringComparison.Ordinal));
        await TestWait.EventuallyAsync(() => agent.Logs.Count(142) == 1, "the agent gave up waiting");
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(20));
    }

    [Fact]
    public async Task CtrlCWhileReconnectingStillInterruptsTheTool()
    {
        await using var agent = await TestAgent.StartAsync(output);
        await using var proxy = new CuttableTcpProxy(agent.Address);
        Route(proxy);
        await using var jbazel = StartJBazel(["trap-int"]);
        await jbazel.WaitForStdoutAsync("ready grandchild=", s_timeout);
        var grandchild = GrandchildPid(jbazel);

        proxy.Refuse();
        proxy.CutAll();
        await TestWait.EventuallyAsync(() => proxy.Refused > 0, "jbazel is reconnecting");
        await jbazel.SignalAsync("INT");
        proxy.Accept();

        // bazel's own answer to Ctrl-C (trap-int exits 8), delivered once jbazel has reattached.
        Assert.Equal(8, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Single(ReattachLines(jbazel));
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(20));
    }

    private string Stage(string name) => Path.Combine(_files.FullName, name);

    private void Route(CuttableTcpProxy proxy) =>
        _remote.GetServer = (_, _) =>
        {
            var response = _remote.DirectResponse();
            response.AgentId = TestAgent.AgentId;
            response.Address = proxy.Address;
            return Task.FromResult(response);
        };

    private JBazelProcess StartJBazel(string[] args)
    {
        var env = new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString() };
        var process = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, env, args);
        process.StandardInput.Close();
        return process;
    }

    private static List<string> ReattachLines(JBazelProcess jbazel) =>
        Regex.Matches(Encoding.ASCII.GetString(jbazel.Stderr), @"rbs: connection to agent \S+ (at|through the gateway at) \S+ lost; reattached to invocation [0-9a-f-]+ after [0-9]+\.[0-9] s\n")
            .Select(match => match.Value)
            .ToList();

    private static int GrandchildPid(JBazelProcess jbazel) =>
        int.Parse(Regex.Match(jbazel.StdoutText, "ready grandchild=([0-9]+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
}
