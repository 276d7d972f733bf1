using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Shared.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;

namespace Rbs.Tests.Stacks.Telemetry;

/// <summary>
/// docs/operations.md against the real thing: real bazel builds a genrule through real processes (rbs-gateway,
/// rbs-orchestrator --local-mode and the rbs-agent it starts; jbazel in tunnel mode with the workspace sync and the
/// output fetch), twice (cold, then warm). Then every server's /metrics is scraped and every metric the operations
/// table lists for it is found with a value that fits what happened; and one run is one trace: the trace id jbazel
/// prints is the one in the agent's audit line of that command (jbazel → gateway → agent).
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed partial class TelemetryStackTests(ITestOutputHelper output)
{
    private const string Bazel = "/usr/bin/bazel";
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(240);

    [SkippableFact]
    public async Task AfterARealBuildEveryDocumentedMetricHasASensibleValueAndEachRunIsOneTrace()
    {
        Skip.IfNot(File.Exists(Bazel), "bazel is not installed at /usr/bin/bazel");
        await using var stack = await Stack.StartAsync(output);
        var first = await stack.JBazelAsync(output);
        // A warm GetServer for the warm row (without this, jbazel's cached allocation skips GetServer altogether).
        stack.ForgetCachedAllocations();
        var second = await stack.JBazelAsync(output);
        Assert.Contains(") cold in ", first.Status, StringComparison.Ordinal);
        Assert.Contains(") warm in ", second.Status, StringComparison.Ordinal);
        Assert.Equal(first.AgentId, second.AgentId);
        Assert.Equal("hello from rbs", File.ReadAllText(Path.Combine(stack.Workspace, "jbazel-out", "k8-fastbuild", "bin", "hello.txt")).Trim());

        var documented = DocumentedMetrics();
        var scrapes = new Dictionary<string, Scrape>
        {
            ["rbs-gateway"] = await Scrape.HttpAsync(stack.GatewayAgentAddress + "/metrics", http2: false),
            ["rbs-orchestrator"] = await Scrape.HttpAsync(stack.OrchestratorAddress + "/metrics", http2: true),
            ["rbs-agent"] = await Scrape.HttpAsync(await stack.AgentAddressAsync(first.AgentId) + "/metrics", http2: true),
        };
        foreach (var (server, metrics) in documented)
        {
            var scrape = scrapes[server];
            foreach (var (name, type) in metrics)
            {
                var series = scrape.Series(type == "histogram" ? name + "_count" : name);
                Assert.True(series.Count > 0, $"{server}: documented metric {name} is not in its /metrics");
                Assert.All(series, s => Assert.True(double.IsFinite(s.Value) && s.Value >= 0, $"{server}: {s.Line}"));
            }

            // The frameworks' instruments ride along: ASP.NET Core's requests and the runtime's allocations.
            Assert.True(scrape.Sum("http_server_request_duration_seconds_count") >= 1, $"{server}: no ASP.NET Core request metrics");
            Assert.True(scrape.Sum("dotnet_gc_heap_total_allocated_bytes_total") > 0, $"{server}: no runtime allocation metrics");
        }

        Assert.Equal(["rbs-agent", "rbs-gateway", "rbs-orchestrator"], documented.Keys.Order());
        Assert.True(documented.Values.Sum(m => m.Count) >= 16, "the operations table lists fewer metrics than the code exports; is the parser broken?");

        // What the two builds did, as each server counts it.
        var gateway = scrapes["rbs-gateway"];
        Assert.True(gateway.Sum("rbs_gateway_agents") >= 1, "the agent's tunnels are connected to the gateway");
        Assert.True(gateway.Sum("rbs_gateway_tunnels") >= 1, "the agent keeps tunnels to the gateway");
        Assert.Equal(0, gateway.Sum("rbs_gateway_streams_waiting"));
        Assert.Equal(0, gateway.Sum("rbs_gateway_forward_errors_total"));
        Assert.Equal(4, gateway.Series("rbs_gateway_forward_errors_total").Count);
        var orchestrator = scrapes["rbs-orchestrator"];
        Assert.Equal(1, orchestrator.Sum("rbs_orchestrator_get_server_duration_seconds_count", "rbs_warm=\"false\""));
        Assert.True(orchestrator.Sum("rbs_orchestrator_get_server_duration_seconds_count", "rbs_warm=\"true\"") >= 1);
        Assert.Equal(1, orchestrator.Sum("rbs_orchestrator_allocations_total", "rbs_outcome=\"started\""));
        Assert.Equal(0, orchestrator.Sum("rbs_orchestrator_dead_agents_total"));
        var agent = scrapes["rbs-agent"];
        Assert.Equal(2, agent.Sum("rbs_agent_command_duration_seconds_count", "rbs_exit_code=\"0\""));
        Assert.True(agent.Sum("rbs_agent_command_duration_seconds_sum") > 0);
        Assert.Equal(0, agent.Sum("rbs_agent_commands_running"));
        Assert.True(agent.Sum("rbs_agent_sync_bytes_total") >= new FileInfo(Path.Combine(stack.Workspace, "BUILD")).Length, "the first sync sent the tree");
        Assert.True(agent.Sum("rbs_agent_sync_files_total") >= 2, "WORKSPACE and BUILD were written");
        // The second build's tree is the one the first synced: jbazel names it in the start frame and makes no Sync call.
        Assert.Equal(1, agent.Sum("rbs_agent_syncs_total"));
        Assert.True(agent.Sum("rbs_agent_fetch_bytes_total") >= "hello from rbs\n".Length, "hello.txt was fetched");

        // One run, one trace: the id jbazel printed is the one the agent's audit line of that command carries.
        var audit = stack.AgentLog(first.AgentId).Where(line => line.Contains("Audit: ", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, audit.Count);
        Assert.Contains($"trace {first.TraceId}", audit[0], StringComparison.Ordinal);
        Assert.Contains($"trace {second.TraceId}", audit[1], StringComparison.Ordinal);
        Assert.NotEqual(first.TraceId, second.TraceId);
        Assert.Contains("user local agent " + first.AgentId, audit[0], StringComparison.Ordinal);
        Assert.Contains("build", audit[0], StringComparison.Ordinal);
        Assert.Contains("exit code 0", audit[0], StringComparison.Ordinal);
    }

    /// <summary>The operations table: server → (Prometheus name, type), from docs/operations.md.</summary>
    private static Dictionary<string, List<(string Name, string Type)>> DocumentedMetrics()
    {
        var docs = FindAbove(Path.Combine("docs", "operations.md"));
        var result = new Dictionary<string, List<(string, string)>>(StringComparer.Ordinal);
        foreach (Match row in MetricRow().Matches(File.ReadAllText(docs)))
        {
            var server = row.Groups["server"].Value;
            if (!result.TryGetValue(server, out var list))
            {
                result[server] = list = [];
            }

            list.Add((row.Groups["prometheus"].Value, row.Groups["type"].Value.Split(' ')[0]));
        }

        return result;
    }

    private static string FindAbove(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var path = Path.Combine(dir.FullName, relative);
            if (File.Exists(path))
            {
                return path;
            }
        }

        throw new FileNotFoundException($"{relative} not found above {AppContext.BaseDirectory}");
    }

    [GeneratedRegex(@"^\| (?<server>rbs-[a-z]+) \| `(?<otel>rbs\.[a-z_.]+)` \| `(?<prometheus>rbs_[a-z_]+)` \| (?<type>[a-z -]+(?:\([a-z-]+\))?) \|", RegexOptions.Multiline)]
    private static partial Regex MetricRow();

    [GeneratedRegex(@"^rbs: agent (?<agent>\S+) .*, trace (?<trace>[0-9a-f]{32})$", RegexOptions.Multiline)]
    private static partial Regex StatusLine();

    private sealed record Run(string Status, string AgentId, string TraceId);

    /// <summary>A Prometheus text exposition: its samples.</summary>
    private sealed partial class Scrape(IReadOnlyList<(string Name, string Labels, double Value, string Line)> samples)
    {
        public static async Task<Scrape> HttpAsync(string url, bool http2)
        {
            using var client = new HttpClient(new SocketsHttpHandler()) { Timeout = TimeSpan.FromSeconds(30) };
            using var request = new HttpRequestMessage(HttpMethod.Get, url)
            {
                Version = http2 ? HttpVersion.Version20 : HttpVersion.Version11,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            };
            using var response = await client.SendAsync(request);
            Assert.True(response.IsSuccessStatusCode, $"GET {url}: {(int)response.StatusCode}");
            var samples = new List<(string, string, double, string)>();
            foreach (var line in (await response.Content.ReadAsStringAsync()).Split('\n'))
            {
                if (Sample().Match(line) is { Success: true } m)
                {
                    samples.Add((m.Groups["name"].Value, m.Groups["labels"].Value, double.Parse(m.Groups["value"].Value, CultureInfo.InvariantCulture), line));
                }
            }

            return new Scrape(samples);
        }

        public List<(string Name, string Labels, double Value, string Line)> Series(string name) => [.. samples.Where(s => s.Name == name)];

        public double Sum(string name, string? label = null) =>
            Series(name).Where(s => label is null || s.Labels.Contains(label, StringComparison.Ordinal)).Sum(s => s.Value);

        [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?<labels>[^}]*)\})? (?<value>[-+0-9.eE]+|NaN|\+Inf)(?: \d+)?$")]
        private static partial Regex Sample();
    }

    /// <summary>Gateway, orchestrator (local mode, real bazel as the agents' tool) and a genrule workspace, as real processes.</summary>
    private sealed class Stack : IAsyncDisposable
    {
        private readonly List<Process> _processes = [];
        private readonly ConcurrentQueue<string> _logs = new();
        private readonly ITestOutputHelper _output;

        private Stack(ITestOutputHelper output) => _output = output;

        public string Root { get; } = Directory.CreateTempSubdirectory("rbs-telemetry-").FullName;

        public string Workspace => Path.Combine(Root, "ws");

        public string GatewayPublicAddress { get; private set; } = "";

        public string GatewayAgentAddress { get; private set; } = "";

        public string OrchestratorAddress { get; private set; } = "";

        private string AgentsDirectory => Path.Combine(Root, "state", "agents");

        private string OutputUserRoot => Path.Combine(Root, "bazel-root");

        private string Synced => Path.Combine(Root, "synced");

        public static async Task<Stack> StartAsync(ITestOutputHelper output)
        {
            var stack = new Stack(output);
            try
            {
                await stack.StartCoreAsync();
                return stack;
            }
            catch
            {
                await stack.DisposeAsync();
                throw;
            }
        }

        private async Task StartCoreAsync()
        {
            Directory.CreateDirectory(Workspace);
            File.WriteAllText(Path.Combine(Workspace, "WORKSPACE"), "workspace(name = \"telemetry\")\n");
            File.WriteAllText(Path.Combine(Workspace, "BUILD"), "genrule(name = \"hello\", outs = [\"hello.txt\"], cmd = \"echo hello from rbs > $@\")\n");
            File.WriteAllText(Path.Combine(Workspace, ".bazelignore"), "jbazel-out\n");
            Directory.CreateDirectory(Path.Combine(Root, "home"));
            var keyFile = Path.Combine(Root, "token.key");
            await File.WriteAllTextAsync(keyFile, RbsTokenKeyRing.GenerateKey() + "\n");

            OrchestratorAddress = $"http://127.0.0.1:{FreePort()}";
            var gatewayReady = Path.Combine(Root, "gateway.json");
            Start("rbs-gateway", "--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--orchestrator", OrchestratorAddress,
                "--token-key-file", keyFile, "--ready-file", gatewayReady);
            var gateway = await ReadWhenPresentAsync<GatewayReadyFile>(gatewayReady);
            GatewayPublicAddress = gateway.PublicAddress;
            GatewayAgentAddress = gateway.AgentAddress;

            var orchestratorReady = Path.Combine(Root, "orchestrator.json");
            Start("rbs-orchestrator", "--local-mode", "--port", new Uri(OrchestratorAddress).Port.ToString(CultureInfo.InvariantCulture),
                "--state-path", Path.Combine(Root, "state", "orchestrator.db"), "--ready-file", orchestratorReady, "--workspaces-path", Synced,
                "--agent-path", Path.Combine(AppContext.BaseDirectory, "rbs-agent"), "--build-tool", Bazel,
                "--gateway-public-address", GatewayPublicAddress, "--gateway-agent-address", GatewayAgentAddress, "--token-key-file", keyFile);
            await ReadWhenPresentAsync<OrchestratorReadyFile>(orchestratorReady);
        }

        /// <summary>jbazel through the gateway (GetServer proxied, then sync, build and fetch over the tunnel).</summary>
        public async Task<Run> JBazelAsync(ITestOutputHelper output)
        {
            await using var jbazel = JBazelProcess.Start(
                output,
                Workspace,
                Path.Combine(Root, "home"),
                new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = GatewayPublicAddress, ["XDG_CACHE_HOME"] = Path.Combine(Root, "xdg-cache") },
                ["--rbs_sync", "--rbs_fetch_outputs", "--rbs_connect=tunnel", "--rbs_status=always", $"--output_user_root={OutputUserRoot}", "build", "//:hello"]);
            jbazel.StandardInput.Close();
            int code;
            try
            {
                code = await jbazel.WaitForExitAsync(s_timeout);
            }
            finally
            {
                Flush();
            }

            TestLog.Write(output, $"jbazel exit {code}; stderr:\n{jbazel.StderrText}");
            Assert.Equal(0, code);
            var status = StatusLine().Match(jbazel.StderrText);
            Assert.True(status.Success, "no status line with a trace id");
            return new Run(status.Value, status.Groups["agent"].Value, status.Groups["trace"].Value);
        }

        public async Task<string> AgentAddressAsync(string agentId) =>
            (await ReadyFile.TryReadAsync<AgentReadyFile>(Path.Combine(AgentsDirectory, agentId + ".json"), CancellationToken.None)
                ?? throw new InvalidOperationException($"agent {agentId} has no ready file")).Address;

        /// <summary>jbazel's cached GetServer answers (JBazel/README.md, "Cached allocation"): gone, so the next run asks GetServer.</summary>
        public void ForgetCachedAllocations()
        {
            var cache = Path.Combine(Root, "xdg-cache", "jbazel", "allocations");
            if (Directory.Exists(cache))
            {
                Directory.Delete(cache, recursive: true);
            }
        }

        public IReadOnlyList<string> AgentLog(string agentId) => File.ReadAllLines(Path.Combine(AgentsDirectory, agentId + ".log"));

        public async ValueTask DisposeAsync()
        {
            await StartedProcesses.StopAllAsync(_processes, _logs.Enqueue);

            // Agents run in their own sessions; bazel's server in its own too: stop both.
            if (Directory.Exists(AgentsDirectory))
            {
                foreach (var agentId in Directory.EnumerateFiles(AgentsDirectory, "*.log").Select(Path.GetFileNameWithoutExtension).OfType<string>())
                {
                    foreach (var pid in UnixProcesses.FindAgentProcesses(agentId))
                    {
                        UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
                        UnixProcesses.Signal(pid, UnixProcesses.SigKill);
                    }

                    foreach (var line in AgentLog(agentId).TakeLast(30))
                    {
                        _logs.Enqueue($"[agent {agentId}] {line}");
                    }
                }
            }

            foreach (var tree in AgentTrees())
            {
                await ShutdownBazelAsync(tree);
            }

            Flush();
            try
            {
                Directory.Delete(Root, recursive: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // bazel's output tree has read-only directories; the temp directory is left for the OS.
            }
        }

        private IEnumerable<string> AgentTrees() => Directory.Exists(Synced)
            ? Directory.EnumerateDirectories(Synced, "tree", new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 2, AttributesToSkip = FileAttributes.ReparsePoint })
                .Where(tree => File.Exists(Path.Combine(tree, "WORKSPACE")))
            : [];

        private async Task ShutdownBazelAsync(string tree)
        {
            var info = new ProcessStartInfo(Bazel) { WorkingDirectory = tree, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            info.ArgumentList.Add($"--output_user_root={OutputUserRoot}");
            info.ArgumentList.Add("shutdown");
            info.Environment["HOME"] = Path.Combine(Root, "home");
            using var process = Process.Start(info)!;
            await Task.WhenAll(process.StandardOutput.ReadToEndAsync(), process.StandardError.ReadToEndAsync(), process.WaitForExitAsync()).WaitAsync(TimeSpan.FromSeconds(60));
        }

        private void Start(string executable, params string[] args)
        {
            var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, executable)) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var arg in args)
            {
                info.ArgumentList.Add(arg);
            }

            foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("Orchestrator__", StringComparison.Ordinal) || k.StartsWith("Gateway__", StringComparison.Ordinal) || k.StartsWith("Agent__", StringComparison.Ordinal) || k.StartsWith("RBS_", StringComparison.Ordinal)).ToList())
            {
                info.Environment.Remove(name);
            }

            // The agents' bazel reads no ~/.bazelrc of this machine's user.
            info.Environment["HOME"] = Path.Combine(Root, "home");
            _logs.Enqueue($"$ {executable} {string.Join(' ', args)}");
            var process = Process.Start(info) ?? throw new InvalidOperationException($"{executable} did not start");
            _processes.Add(process);
            process.OutputDataReceived += (_, e) => Enqueue(executable, e.Data);
            process.ErrorDataReceived += (_, e) => Enqueue(executable, e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        private void Enqueue(string source, string? line)
        {
            if (line is not null)
            {
                _logs.Enqueue($"[{source}] {line}");
            }
        }

        private void Flush()
        {
            while (_logs.TryDequeue(out var line))
            {
                TestLog.Write(_output, line);
            }
        }

        private async Task<T> ReadWhenPresentAsync<T>(string path)
            where T : class, IReadyFileContents =>
            await TestWait.EventuallyAsync(
                async () =>
                {
                    Assert.False(_processes.Any(p => p.HasExited), $"a process exited before writing {path}");
                    return await ReadyFile.TryReadAsync<T>(path, CancellationToken.None);
                },
                $"the ready file {path}",
                TimeSpan.FromSeconds(60));

        private static int FreePort()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
    }
}
