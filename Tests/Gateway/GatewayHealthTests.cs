using System.Diagnostics;
using System.Net;
using Rbs.Shared.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.Orchestrator.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// The gateway's health (docs/operations.md): /readyz follows its link to the orchestrator (a real one, in-process),
/// /healthz stays up either way, both answer on both endpoints without a token, and /metrics is served on the agent
/// endpoint only.
/// </summary>
public sealed class GatewayHealthTests(ITestOutputHelper output)
{
    [Fact]
    public async Task ReadyWhileTheOrchestratorAnswersUnreadyWhenItIsGoneLiveThroughoutMetricsOnlyOnTheAgentEndpoint()
    {
        var context = new OrchestratorTestContext(output);
        var dir = Directory.CreateTempSubdirectory("rbs-gateway-health-").FullName;
        Process? gateway = null;
        try
        {
            var orchestrator = await context.StartOrchestratorAsync(TestAgents.Fake);
            var keyFile = Path.Combine(dir, "token.key");
            await File.WriteAllTextAsync(keyFile, RbsTokenKeyRing.GenerateKey() + "\n");
            var readyFile = Path.Combine(dir, "ready.json");
            gateway = Start("--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--orchestrator", orchestrator.Address,
                "--token-key-file", keyFile, "--ready-file", readyFile);
            var ready = await TestWait.EventuallyAsync(
                () => gateway.HasExited ? throw new InvalidOperationException("rbs-gateway exited early") : ReadyFile.TryRead<GatewayReadyFile>(readyFile),
                "the gateway's ready file");

            using var http = new HttpClient(new SocketsHttpHandler()) { Timeout = TimeSpan.FromSeconds(10) };
            Assert.Equal(HttpStatusCode.OK, await StatusAsync(http, ready.AgentAddress + "/readyz", http2: false));
            Assert.Equal(HttpStatusCode.OK, await StatusAsync(http, ready.PublicAddress + "/readyz", http2: true));
            Assert.Equal(HttpStatusCode.OK, await StatusAsync(http, ready.AgentAddress + "/metrics", http2: false));
            Assert.Equal(HttpStatusCode.NotFound, await StatusAsync(http, ready.PublicAddress + "/metrics", http2: true));

            await orchestrator.StopAsync();
            await TestWait.EventuallyAsync(
                async () => await StatusAsync(http, ready.AgentAddress + "/readyz", http2: false) == HttpStatusCode.ServiceUnavailable,
                "/readyz 503 with the orchestrator gone", TimeSpan.FromSeconds(15));
            using (var response = await http.GetAsync(ready.AgentAddress + "/readyz"))
            {
                Assert.Contains("orchestrator: Unhealthy", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            }

            Assert.Equal(HttpStatusCode.OK, await StatusAsync(http, ready.AgentAddress + "/healthz", http2: false));
            Assert.Equal(HttpStatusCode.OK, await StatusAsync(http, ready.PublicAddress + "/healthz", http2: true));
        }
        finally
        {
            if (gateway is not null)
            {
                gateway.Kill(entireProcessTree: true);
                await gateway.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
                gateway.Dispose();
            }

            await context.DisposeAsync();
            Directory.Delete(dir, recursive: true);
        }
    }

    private static async Task<HttpStatusCode> StatusAsync(HttpClient http, string url, bool http2)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, url)
        {
            Version = http2 ? HttpVersion.Version20 : HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        using var response = await http.SendAsync(request);
        return response.StatusCode;
    }

    private Process Start(params string[] args)
    {
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-gateway")) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("Gateway__", StringComparison.Ordinal)).ToList())
        {
            info.Environment.Remove(name);
        }

        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, e) => Write(e.Data);
        process.ErrorDataReceived += (_, e) => Write(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;

        void Write(string? line)
        {
            if (line is not null)
            {
                TestLog.Write(output, "[rbs-gateway] " + line);
            }
        }
    }
}
