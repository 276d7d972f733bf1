using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

/// <summary>
/// One stream's stdout throughput, direct (client → agent's Kestrel over TCP) vs through the gateway
/// (client → gateway → tunnel → agent), same stand-in agent, same client. Logs MiB/s; asserts only that every
/// byte arrived. Size: <c>RBS_BENCH_MIB</c> (default 32, quick in the suite); measure with
/// <c>RBS_BENCH_MIB=256 dotnet test Tests/Tests.csproj -c Release --filter "Category=Bench" --logger "console;verbosity=detailed"</c>.
/// </summary>
[Collection(TunnelCollection.Name)]
[Trait("Category", "Bench")]
public sealed class TunnelThroughputTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task OneStreamThroughTheGatewayDeliversEveryByteAndLogsThroughputAgainstDirect()
    {
        var mib = int.TryParse(Environment.GetEnvironmentVariable("RBS_BENCH_MIB"), NumberStyles.None, CultureInfo.InvariantCulture, out var m) && m > 0 ? m : 32;
        var rounds = int.TryParse(Environment.GetEnvironmentVariable("RBS_BENCH_ROUNDS"), NumberStyles.None, CultureInfo.InvariantCulture, out var r) && r > 0 ? r : 1;
        var length = mib * 1024L * 1024;

        var direct = await StartDirectAgentAsync("agent-direct");
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-bench", gateway.AgentAddress, _env.JoinToken("agent-bench"));
        await agent.Status.FirstConnected.WaitAsync(TunnelTestEnvironment.Timeout);

        var directClient = new V1.Agent.AgentClient(_env.Channel(direct));
        var gatewayClient = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var gatewayMetadata = TunnelTestEnvironment.Route("agent-bench", _env.SessionToken("agent-bench"));

        // Warm-up (JIT, connections, windows) on both paths.
        await ZerosAsync(directClient, new Metadata(), 4 * 1024 * 1024).WaitAsync(TunnelTestEnvironment.Timeout);
        await ZerosAsync(gatewayClient, gatewayMetadata, 4 * 1024 * 1024).WaitAsync(TunnelTestEnvironment.Timeout);

        var timeout = TimeSpan.FromSeconds(30 + (mib / 2));
        for (var round = 0; round < rounds; round++)
        {
            var (directRate, directCpu) = await MeasureAsync(directClient, new Metadata(), length, timeout);
            var (gatewayRate, gatewayCpu) = await MeasureAsync(gatewayClient, gatewayMetadata, length, timeout);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"BENCH {mib} MiB stdout: direct {directRate:F0} MiB/s ({directCpu:F2} CPU-s/GiB), gateway {gatewayRate:F0} MiB/s ({gatewayCpu:F2} CPU-s/GiB), ratio {gatewayRate / directRate:F2}"));
        }
    }

    /// <summary>MiB/s (wall clock) and this process's CPU seconds per GiB (all ends run in this process; steadier on a loaded box).</summary>
    private static async Task<(double MibPerSecond, double CpuSecondsPerGib)> MeasureAsync(V1.Agent.AgentClient client, Metadata metadata, long length, TimeSpan timeout)
    {
        using var process = Process.GetCurrentProcess();
        var cpuBefore = process.TotalProcessorTime;
        var stopwatch = Stopwatch.StartNew();
        var received = await ZerosAsync(client, metadata, length).WaitAsync(timeout);
        var seconds = stopwatch.Elapsed.TotalSeconds;
        process.Refresh();
        var cpu = (process.TotalProcessorTime - cpuBefore).TotalSeconds;
        Assert.Equal(length, received);
        var gib = length / 1024.0 / 1024.0 / 1024.0;
        return (length / 1024.0 / 1024.0 / seconds, cpu / gib);
    }

    private static async Task<long> ZerosAsync(V1.Agent.AgentClient client, Metadata metadata, long length)
    {
        using var call = client.ExecuteCommand(metadata);
        await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("zeros", length.ToString(CultureInfo.InvariantCulture)));
        long received = 0;
        int? exit = null;
        await foreach (var frame in call.ResponseStream.ReadAllAsync())
        {
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Stdout)
            {
                received += frame.Stdout.Length;
            }
            else if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = frame.Exit.Code;
            }
        }

        await call.RequestStream.CompleteAsync();
        Assert.Equal(0, exit);
        return received;
    }

    /// <summary>The stand-in agent on a plain TCP h2c endpoint, as the real agent listens in direct mode.</summary>
    private async Task<string> StartDirectAgentAsync(string agentId)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().SetMinimumLevel(LogLevel.Information).AddProvider(new TestLoggerProvider(output, "direct " + agentId));
        builder.WebHost.UseShutdownTimeout(TimeSpan.FromSeconds(2));
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(System.Net.IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc();
        builder.Services.AddSingleton(new StandInAgentService(agentId));
        var app = builder.Build();
        app.MapGrpcService<StandInAgentService>();
        await app.StartAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        var host = new AgentHost(app, new TestLoggerProvider(output, "direct"));
        _env.Track(host);
        var address = app.Urls.First().Replace("[::1]", "127.0.0.1", StringComparison.Ordinal);
        output.WriteLine($"direct agent: {address}");
        return address;
    }
}
