import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BlockedAddresses } from '../src/network/blocked-addresses.js';

describe('blocked addresses', () => {
  const blocked = new BlockedAddresses({ extraRanges: [['10.200.0.0/16', 'sandbox-pool'], ['192.0.2.7/32', 'host-address']] });

  it('refuses every default range, at both edges, and lets the neighbours through', () => {
    const cases: Array<[string, string | null]> = [
      ['0.0.0.0', 'this-network'], ['0.255.255.255', 'this-network'], ['1.0.0.0', null],
      ['9.255.255.255', null], ['10.0.0.0', 'private'], ['10.255.255.255', 'private'], ['11.0.0.0', null],
      ['100.63.255.255', null], ['100.64.0.0', 'cgnat'], ['100.127.255.255', 'cgnat'], ['100.128.0.0', null],
      ['126.255.255.255', null], ['127.0.0.1', 'loopback'], ['127.255.255.255', 'loopback'], ['128.0.0.0', null],
      ['169.253.255.255', null], ['169.254.0.0', 'link-local'], ['169.254.169.254', 'link-local'], ['169.255.0.0', null],
      ['172.15.255.255', null], ['172.16.0.0', 'private'], ['172.31.255.255', 'private'], ['172.32.0.0', null],
      ['192.0.0.1', 'ietf-protocol'], ['192.0.1.0', null], ['192.167.255.255', null], ['192.168.1.1', 'private'], ['192.169.0.0', null],
      ['198.17.255.255', null], ['198.18.0.0', 'benchmarking'], ['198.19.255.255', 'benchmarking'], ['198.20.0.0', null],
      ['223.255.255.255', null], ['224.0.0.1', 'multicast'], ['239.255.255.255', 'multicast'],
      ['240.0.0.0', 'reserved'], ['255.255.255.255', 'reserved'],
      // The documentation ranges stay usable (the test internet lives there), except what is added.
      ['203.0.113.10', null], ['198.51.100.1', null], ['192.0.2.1', null], ['192.0.2.7', 'host-address'],
    ];
    for (const [ip, want] of cases) assert.equal(blocked.reason(ip), want, ip);
  });

  it('judges the earlier range first where ranges overlap', () => {
    assert.equal(blocked.reason('10.200.1.1'), 'private');
  });

  it('sees through IPv4 written inside IPv6, refuses other IPv6 and anything unparsable', () => {
    assert.equal(blocked.reason('::ffff:127.0.0.1'), 'loopback');
    assert.equal(blocked.reason('::FFFF:169.254.169.254'), 'link-local');
    assert.equal(blocked.reason('64:ff9b::10.1.2.3'), 'private');
    assert.equal(blocked.reason('::ffff:203.0.113.10'), null);
    for (const ip of ['::1', '2001:db8::1', 'fe80::1', '::']) assert.equal(blocked.reason(ip), 'ipv6', ip);
    for (const ip of ['', 'a.test', '1.2.3', '1.2.3.4.5', '01.2.3.4', '256.1.1.1', '1.2.3.4 ', '1.2.3.4/32']) {
      assert.equal(blocked.reason(ip), 'not-an-address', JSON.stringify(ip));
    }
  });

  it('takes an operator list instead of the defaults, and rejects a malformed one', () => {
    const own = new BlockedAddresses({ ranges: ['127.0.0.1/32', '203.0.113.128/25', 'fe80::/10', '0.0.0.0/32'] });
    assert.equal(own.reason('127.0.0.1'), 'blocked-range');
    assert.equal(own.reason('127.0.0.2'), null);
    assert.equal(own.reason('203.0.113.127'), null);
    assert.equal(own.reason('203.0.113.200'), 'blocked-range');
    assert.equal(own.reason('0.0.0.0'), 'blocked-range');
    assert.equal(new BlockedAddresses({ ranges: ['0.0.0.0/0'] }).reason('8.8.8.8'), 'blocked-range');
    assert.equal(new BlockedAddresses({ ranges: ['203.0.113.10'] }).reason('203.0.113.10'), 'blocked-range');
    for (const bad of ['abc/8', '10.0.0.0/33', '10.0.0.0/', '10.0.0.0/8/8', '10.0.0.0/-1', '10.0.0.0/x', '::1/129', '']) {
      assert.throws(() => new BlockedAddresses({ ranges: [bad] }), /not an IP range/, bad);
    }
  });
});
