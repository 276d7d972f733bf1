using Microsoft.Extensions.Options;
using Rbs.Shared.Hosting;

namespace Rbs.Gateway.Hosting;

/// <summary>Once both endpoints listen, logs them and writes the <see cref="GatewayReadyFile"/> when configured (<see cref="ReadyFile.Write{T}"/>: atomically).</summary>
internal sealed partial class GatewayReadyAnnouncer(
    IHostApplicationLifetime lifetime,
    GatewayEndpoints endpoints,
    IOptions<GatewayOptions> options,
    ILogger<GatewayReadyAnnouncer> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(() =>
        {
            Log.Listening(logger, endpoints.PublicAddress, endpoints.AgentAddress);
            if (options.Value.ReadyFile is { Length: > 0 } path)
            {
                ReadyFile.Write(path, new GatewayReadyFile(endpoints.PublicAddress, endpoints.AgentAddress, Environment.ProcessId));
            }
        });
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Gateway listening: public {PublicAddress}, agents {AgentAddress}")]
        public static partial void Listening(ILogger logger, string publicAddress, string agentAddress);
    }
}
