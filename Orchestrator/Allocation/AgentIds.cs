using System.Security.Cryptography;

namespace Rbs.Orchestrator.Allocation;

/// <summary>Agent ids: "a" + 20 lowercase hex characters (80 random bits), unique for an agent's lifetime.</summary>
internal static class AgentIds
{
    public static string New() => "a" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(10));
}
