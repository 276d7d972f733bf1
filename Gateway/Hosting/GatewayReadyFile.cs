using System.Text.Json;
using Microsoft.Extensions.Options;

namespace Rbs.Gateway.Hosting;

/// <summary>Writes <c>{"publicAddress":..,"agentAddress":..,"pid":..}</c> once listening (tmp + rename, so readers never see half a file).</summary>
internal sealed partial class GatewayReadyFile(
    IHostApplicationLifetime lifetime,
    GatewayEndpoints endpoints,
    IOptions<GatewayOptions> options,
    ILogger<GatewayReadyFile> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(() =>
        {
            Log.Listening(logger, endpoints.PublicAddress, endpoints.AgentAddress);
            if (options.Value.ReadyFile is not { Length: > 0 } path)
            {
                return;
            }

            var json = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["publicAddress"] = endpoints.PublicAddress,
                ["agentAddress"] = endpoints.AgentAddress,
                ["pid"] = Environment.ProcessId,
            });
            var full = Path.GetFullPath(path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllText(full + ".tmp", json);
            File.Move(full + ".tmp", full, overwrite: true);
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
