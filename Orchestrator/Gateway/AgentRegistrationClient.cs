// GetServer waits with this until a tunnel-mode agent is registered at the gateway. Tokens: Shared/Tokens.
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using Rbs.Shared.Tokens;

namespace Rbs.Orchestrator.Gateway;

/// <summary>
/// Asks the gateway's internal API whether an agent has a live tunnel, long-polling so the answer arrives as
/// soon as the agent registers. Authenticates with a short-lived <see cref="RbsTokenKind.Internal"/> token.
/// </summary>
/// <param name="internalToken">Mints a fresh internal token per query (the orchestrator's <c>RbsTokenService</c>).</param>
internal sealed class AgentRegistrationClient(HttpClient http, Uri gatewayAgentEndpoint, Func<string> internalToken)
{
    private static readonly TimeSpan s_maxPoll = TimeSpan.FromSeconds(60);

    /// <summary>True once <paramref name="agentId"/> is online at the gateway; false if not within <paramref name="timeout"/>.</summary>
    public async Task<bool> WaitUntilRegisteredAsync(string agentId, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTimeOffset.UtcNow + timeout;
        while (true)
        {
            var remaining = deadline - DateTimeOffset.UtcNow;
            var wait = remaining <= TimeSpan.Zero ? TimeSpan.Zero : remaining < s_maxPoll ? remaining : s_maxPoll;
            if (await IsRegisteredAsync(agentId, wait, cancellationToken))
            {
                return true;
            }

            if (DateTimeOffset.UtcNow >= deadline)
            {
                return false;
            }
        }
    }

    /// <summary>One query; <paramref name="wait"/> &gt; 0 long-polls at the gateway for up to that long.</summary>
    public async Task<bool> IsRegisteredAsync(string agentId, TimeSpan wait, CancellationToken cancellationToken)
    {
        var seconds = (int)Math.Ceiling(wait.TotalSeconds);
        var uri = new Uri(gatewayAgentEndpoint, $"internal/v1/agents/{Uri.EscapeDataString(agentId)}?waitSeconds={seconds}");
        using var request = new HttpRequestMessage(HttpMethod.Get, uri);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", internalToken());
        using var response = await http.SendAsync(request, cancellationToken);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            return false;
        }

        if (response.StatusCode == HttpStatusCode.Unauthorized)
        {
            throw new InvalidOperationException(
                $"the gateway at {gatewayAgentEndpoint} rejected the orchestrator's internal token: the two must share the same token key");
        }

        response.EnsureSuccessStatusCode();
        using var json = await JsonDocument.ParseAsync(await response.Content.ReadAsStreamAsync(cancellationToken), cancellationToken: cancellationToken);
        return json.RootElement.TryGetProperty("online", out var online) && online.ValueKind == JsonValueKind.True;
    }
}
