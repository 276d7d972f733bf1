using System.Globalization;
using System.Security.Cryptography;

namespace Rbs.Orchestrator.Hosting;

/// <summary>
/// This orchestrator process's identity as a lease owner. Fresh per process, so a restarted replica never
/// mistakes a lease its predecessor held for its own.
/// </summary>
internal sealed class ReplicaIdentity
{
    public string Id { get; } = string.Create(
        CultureInfo.InvariantCulture,
        $"{Environment.MachineName}/{Environment.ProcessId}/{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}");
}
