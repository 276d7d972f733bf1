using System.Net.Sockets;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>Whether a Docker engine answers here (the client binary alone is not enough for Testcontainers).</summary>
internal static class DockerEngine
{
    private static readonly Lazy<string?> s_unavailableReason = new(Probe);

    /// <summary>Null when an engine answered <c>/_ping</c>; otherwise why not, for the skip message.</summary>
    public static string? UnavailableReason => s_unavailableReason.Value;

    private static string? Probe()
    {
        var host = Environment.GetEnvironmentVariable("DOCKER_HOST");
        if (string.IsNullOrEmpty(host))
        {
            host = "unix:///var/run/docker.sock";
        }

        try
        {
            using var handler = new SocketsHttpHandler();
            Uri baseAddress;
            if (host.StartsWith("unix://", StringComparison.Ordinal))
            {
                var path = host["unix://".Length..];
                if (!File.Exists(path))
                {
                    return $"no Docker engine: socket {path} does not exist (DOCKER_HOST={host})";
                }

                handler.ConnectCallback = async (_, ct) =>
                {
                    var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                    return new NetworkStream(socket, ownsSocket: true);
                };
                baseAddress = new Uri("http://docker/");
            }
            else
            {
                baseAddress = new Uri(host.Replace("tcp://", "http://", StringComparison.Ordinal));
            }

            using var client = new HttpClient(handler) { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(3) };
            var response = client.GetAsync("_ping").GetAwaiter().GetResult();
            return response.IsSuccessStatusCode ? null : $"Docker engine at {host} answered /_ping with {(int)response.StatusCode}";
        }
        catch (Exception e) when (e is HttpRequestException or SocketException or IOException or TaskCanceledException)
        {
            return $"no Docker engine answers at {host}: {e.GetBaseException().Message}";
        }
    }
}
